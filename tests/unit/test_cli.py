"""The `gradkit` command's own parts: its subcommands, their arguments, how a command ends."""

from __future__ import annotations

import gc
import os
import socket
import sys

import pytest

from gradkit.cli import main
from gradkit.cli.commands import run_command, split_config_dirs


def test_a_command_freezes_what_is_left_when_it_ends_however_it_ends(monkeypatch):
    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    run_command(lambda: None)
    with pytest.raises(SystemExit):
        run_command(lambda: sys.exit(2))
    assert frozen == [True, True]


def test_no_command_prints_the_usage(capsys):
    main([])
    out = capsys.readouterr().out
    assert out.startswith("usage: gradkit COMMAND")
    assert all(f"  {name} " in out for name in ("run", "list", "report", "reproduce", "ui"))


@pytest.mark.parametrize(("args", "code", "said"), [
    (["runn"], 2, "'runn' is not a gradkit command; choose one of: run, list, report, reproduce"),
    (["list", "extra"], 2, "gradkit list takes only --config-dir DIR, not extra"),
    (["list", "--config-dir"], 2, "--config-dir needs a folder: --config-dir DIR"),
    (["list", "--config-dir", "/nonexistent"], 1, "--config-dir /nonexistent is not a folder"),
    (["ui", "--store", "/nonexistent"], 1, "--store /nonexistent holds no mlflow.db"),
    (["ui", "--port", "abc"], 2, "argument --port: invalid int value: 'abc'"),
])
def test_bad_arguments_are_one_line_with_a_usage_status(args, code, said, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == code
    assert said in capsys.readouterr().err


def test_the_ui_on_a_port_in_use_says_so_before_starting(tmp_path, capsys, monkeypatch):
    (tmp_path / "mlflow.db").touch()
    monkeypatch.setattr(os, "execv", lambda *args: pytest.fail(f"started {args}"))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            main(["ui", "--store", str(tmp_path), "--port", str(port)])

    assert exit_.value.code == 1
    assert capsys.readouterr().err == (f"gradkit: 127.0.0.1:{port} is taken (another "
                                       "`gradkit ui`?); choose another with --port\n")


@pytest.mark.parametrize(("args", "said"), [
    (["--port", "70000"], "--port 70000 is not a port; use 0..65535"),
    (["--host", "192.0.2.1"], "cannot listen on 192.0.2.1:"),  # an address not of this machine
])
def test_the_ui_where_it_cannot_listen_is_one_line(args, said, tmp_path, capsys, monkeypatch):
    (tmp_path / "mlflow.db").touch()
    monkeypatch.setattr(os, "execv", lambda *args: pytest.fail(f"started {args}"))
    with pytest.raises(SystemExit):
        main(["ui", "--store", str(tmp_path), *args])

    assert said in capsys.readouterr().err


def test_config_dirs_are_taken_out_of_the_arguments():
    assert split_config_dirs(["-cd", "a", "x=1", "--config-dir=b", "--config-dir", "c"]) == (
        ["a", "b", "c"], ["x=1"])
