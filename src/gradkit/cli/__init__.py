"""The `gradkit` command: `gradkit run | list | report | reproduce | ui`, each a thin layer
over the rest of the package, taking Hydra overrides as `python -m gradkit.run` does."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from gradkit import __version__
from gradkit.cli.commands import fail, run_command, say_left_open, split_config_dirs
from gradkit.core import interrupts
from gradkit.core.names import sqlite_uri
from gradkit.core.validation import ConfigError
from gradkit.tracking import unclosed

USAGE = f"""usage: gradkit COMMAND [ARGS ...]   (gradkit {__version__})

  run        one experiment or a sweep: gradkit run [-m] [--config-dir DIR] [KEY=VALUE ...]
  list       experiments and presets:   gradkit list [--config-dir DIR]
  report     the store's runs summed:   gradkit report [--config-dir DIR] [KEY=VALUE ...]
  reproduce  a run replayed, diffed:    gradkit reproduce RUN_ID [--config-dir DIR] [KEY=VALUE ...]
  ui         MLflow's UI on a store:    gradkit ui [--store DIR] [--host HOST] [--port PORT]

`gradkit run [experiment=NAME] --help` lists the global keys and that experiment's;
results go to outputs/ and mlruns/ in this folder."""


def _run(args: list[str]) -> None:
    from gradkit.cli import run

    sys.argv = ["gradkit run", *args]
    run.main()


def _list(args: list[str]) -> None:
    from gradkit.cli.catalog import render

    config_dirs, rest = split_config_dirs(args)
    if rest:
        fail(f"gradkit list takes only --config-dir DIR, not {' '.join(rest)}", 2)
    try:
        print(render(config_dirs))
    except ConfigError as error:
        fail(str(error))
    except BrokenPipeError:  # `gradkit list | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter flushes it at exit


def _report(args: list[str]) -> None:
    from gradkit.reporting import report

    _stoppable(report.main, args)


def _reproduce(args: list[str]) -> None:
    from gradkit.reporting import reproduce

    _stoppable(reproduce.main, args)


def _stoppable(command: Callable[[list[str]], None], args: list[str]) -> None:
    """`command(args)` ended by Ctrl-C, SIGTERM or SIGHUP in one line, with the status a shell
    gives for the signal (a run it had open ends KILLED on the way)."""
    interrupts.install()
    unclosed.begin_command()
    try:
        command(args)
    except interrupts.Interrupted as stop:
        interrupts.exit_stopped(stop)
    finally:
        say_left_open()


def _ui(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="gradkit ui", description="MLflow's UI on a store")
    parser.add_argument("--store", default="mlruns", help="the store folder (default: mlruns)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    options = parser.parse_args(args)
    store = os.path.abspath(options.store)
    if not os.path.isfile(os.path.join(store, "mlflow.db")):
        fail(f"--store {store} holds no mlflow.db; run an experiment first or pass --store DIR")
    _refuse_taken(options.host, options.port)
    shown = f"[{options.host}]" if ":" in options.host else options.host  # an IPv6 address
    print(f"Open http://{shown}:{options.port}/#/?workflowType=machine_learning "
          "(the Model training view)", flush=True)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--host", options.host,
                              "--port", str(options.port), "--backend-store-uri",
                              sqlite_uri(Path(store) / "mlflow.db"), "--default-artifact-root",
                              f"{store}/artifacts"])


def _refuse_taken(host: str, port: int) -> None:
    """Fail in one line unless the UI can listen on host:port (MLflow's own server would
    log the clash among its startup lines and exit with status 0)."""
    if not 0 <= port <= 65535:
        fail(f"--port {port} is not a port; use 0..65535")
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
            probe.bind(address)
    except OSError as error:
        taken = error.errno == errno.EADDRINUSE
        fail(f"{host}:{port} is taken (another `gradkit ui`?); choose another with --port"
             if taken else f"cannot listen on {host}:{port}: {error.strerror or error}")


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "run": _run, "list": _list, "report": _report, "reproduce": _reproduce, "ui": _ui}


def main(argv: list[str] | None = None) -> None:
    """The `gradkit` console script."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if args[0] == "--version":
        print(f"gradkit {__version__}")
        return
    command = COMMANDS.get(args[0])
    if command is None:
        fail(f"{args[0]!r} is not a gradkit command; choose one of: {', '.join(COMMANDS)}", 2)
    if "" not in sys.path and os.getcwd() not in sys.path:  # like `python -m`: the folder's
        sys.path.insert(0, os.getcwd())                     # modules are importable targets
    run_command(lambda: command(args[1:]))
