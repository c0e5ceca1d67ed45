"""`gradkit run`: compose the config, then run each job (`gradkit.core.job`) and report.

The experiments' configs are built from their classes before Hydra composes (torch and
matplotlib load then); MLflow and the store load only with the first job, so a misspelt key
or `--help` is answered without them.
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from gradkit.cli.commands import say_left_open
from gradkit.core import interrupts
from gradkit.core.configs import SEARCH_PATH
from gradkit.core.errors import explain
from gradkit.core.parameters import register_builtins
from gradkit.sweeps.hydra_compat import register_sweeper
from gradkit.tracking import unclosed


class SingleRunFailed(BaseException):
    """A single run's error, carried past Hydra's job wrapper, which would print a line of
    its own (`Error executing job with overrides: ...`) before `main` prints the error's."""


@hydra.main(version_base="1.3", config_path=SEARCH_PATH, config_name="config")
def run_job(cfg: DictConfig) -> float:
    """One job: every key checked before any work, then one MLflow run."""
    from gradkit.core import job  # the heavy imports, once there is a job to run

    try:
        return job.run(cfg)
    except Exception as error:
        if HydraConfig.get().mode == RunMode.RUN:  # a sweep's other jobs go on: Hydra's way
            raise SingleRunFailed(error) from None
        raise


def ended_sweeps(interrupted: bool) -> list[str]:
    """End the sweeps this process left open; none when no sweep ever started (Hydra loads
    `gradkit.sweeps.callback` for its callback when one does)."""
    sweeps = sys.modules.get("gradkit.sweeps.callback")
    return sweeps.end_open_sweeps(interrupted=interrupted) if sweeps else []


def failed_closings() -> list[str]:
    """Runs of this command's jobs that ended FAILED after their job returned: their files
    could not be written or logged (`gradkit.sweeps.closing`, loaded with the first job)."""
    closing = sys.modules.get("gradkit.sweeps.closing")
    return closing.take_failures() if closing else []


def main() -> None:
    """`gradkit run ARGS` (ARGS in `sys.argv[1:]`): errors in one line; Ctrl-C or SIGTERM
    end every open run."""
    interrupts.install()
    unclosed.begin_command()
    register_sweeper()
    register_builtins()
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra hands every error back here
    try:
        run_job()
        failures = failed_closings()
        for failure in failures:
            print(f"gradkit: {failure}", file=sys.stderr)
        if failures:
            raise SystemExit(1)
    except (Exception, SingleRunFailed) as caught:
        error = caught.args[0] if isinstance(caught, SingleRunFailed) else caught
        if full_error == "1":
            raise error from error.__cause__  # its own traceback and cause, not the carrier
        print(f"gradkit: {explain(error, sys.argv[1:])}", file=sys.stderr)
        raise SystemExit(1) from None
    except interrupts.Interrupted as stop:
        interrupts.exit_stopped(stop, ended_sweeps(interrupted=True))
    finally:  # Hydra skips on_multirun_end when a job raises
        for line in ended_sweeps(interrupted=False):
            print(f"gradkit: {line}", file=sys.stderr)
        say_left_open()
        if full_error is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
