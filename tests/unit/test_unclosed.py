"""The journal of runs a command could not end: remembered, ended later, kept while the
store still fails."""

from __future__ import annotations

import pytest

from gradkit.tracking import unclosed

URI = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def _own_state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setattr(unclosed, "_remembered", [])
    monkeypatch.delenv(unclosed.COMMAND, raising=False)


def test_runs_left_open_are_ended_by_the_next_command_that_reaches_the_store():
    unclosed.remember(URI, "a" * 32, "#0 lr=0.1", "FAILED")
    unclosed.remember(URI, "b" * 32, "sweep parent of descent", "KILLED")
    assert unclosed.take_left_open() == (
        f"could not end run {'a' * 32} (#0 lr=0.1), run {'b' * 32} (sweep parent of descent): "
        "they show RUNNING until the next gradkit command that reaches the store ends them")
    assert unclosed.pending(URI) and not unclosed.pending("http://elsewhere:5000")

    ended = []
    lines = unclosed.end_left_open(URI, lambda run_id, status: ended.append((run_id, status)))

    assert ended == [("a" * 32, "FAILED"), ("b" * 32, "KILLED")]
    assert lines == [f"run {'a' * 32} (#0 lr=0.1) ended FAILED",
                     f"run {'b' * 32} (sweep parent of descent) ended KILLED"]
    assert not unclosed.pending(URI) and unclosed.take_left_open() == ""


def test_runs_that_still_cannot_be_ended_stay_remembered():
    unclosed.remember(URI, "a" * 32, "first", "FAILED")
    unclosed.remember(URI, "b" * 32, "second", "FAILED")
    unclosed.journal(URI).open("a").write('{"uri": "cut sho')  # a line a full disk cut

    def end(run_id, status):
        if run_id.startswith("b"):
            raise ConnectionError("still down")

    assert unclosed.end_left_open(URI, end) == [f"run {'a' * 32} (first) ended FAILED"]
    assert unclosed.pending(URI)
    assert unclosed.take_left_open() == (
        f"could not end run {'b' * 32} (second): they show RUNNING until the next gradkit "
        "command that reaches the store ends them")
    assert unclosed.end_left_open(URI, lambda *_: None) == [
        f"run {'b' * 32} (second) ended FAILED"]
    assert not unclosed.pending(URI)


def test_the_last_line_names_the_runs_the_commands_workers_could_not_end(monkeypatch):
    """A joblib or submitit worker remembers in its own process; the command finds its
    workers' runs in the journal by the command id they inherited."""
    unclosed.begin_command()
    unclosed.remember(URI, "a" * 32, "#0 in a worker", "FAILED")
    monkeypatch.setattr(unclosed, "_remembered", [])  # as if remembered in another process
    unclosed.remember("http://other:5000", "b" * 32, "parent", "FAILED")

    assert unclosed.take_left_open() == (
        f"could not end run {'b' * 32} (parent), run {'a' * 32} (#0 in a worker): they show "
        "RUNNING until the next gradkit command that reaches the store ends them")
    unclosed.begin_command()  # the next command: earlier commands' runs are not its own
    assert unclosed.take_left_open() == ""
