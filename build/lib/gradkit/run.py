"""`python -m gradkit.run ...`: the same as `gradkit run ...`."""

if __name__ == "__main__":
    from gradkit.cli import commands, run

    commands.run_command(run.main)
