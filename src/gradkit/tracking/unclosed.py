"""Runs a command could not end because their store stopped answering (a server that went
down, a full disk): remembered on this machine and ended by the next command that reaches
the store, or by this one once the store answers again.

The journal is one file per store under `$XDG_STATE_HOME/gradkit/unclosed` (by default
`~/.local/state/gradkit/unclosed`), a JSON line per run: its id, name and the status it
should have had. Nothing is left RUNNING for good once the store is back.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

COMMAND = "GRADKIT_COMMAND_ID"  # names the command in its workers' environment too
_remembered: list[str] = []  # runs this process could not end: "run ID (NAME)"


def begin_command() -> None:
    """A new command starts in this process: runs its workers (joblib, submitit) cannot end
    are named in its last line too."""
    os.environ[COMMAND] = uuid.uuid4().hex


def journals() -> Path:
    """The folder of the journals, one per store."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "gradkit" / "unclosed"


def journal(uri: str) -> Path:
    """The journal file of the store at `uri`."""
    return journals() / f"{hashlib.sha1(uri.encode()).hexdigest()[:16]}.jsonl"


def remember(uri: str, run_id: str, name: str, status: str) -> None:
    """Run `run_id` of the store at `uri` should have ended `status` but could not be."""
    _remembered.append(f"run {run_id} ({name})")
    try:
        path = journal(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path), path.open("a") as handle:
            handle.write(json.dumps({"uri": uri, "run_id": run_id, "name": name,
                                     "status": status,
                                     "command": os.environ.get(COMMAND, "")}) + "\n")
    except OSError:
        pass  # this disk is full too: the final line still names the run


def pending(uri: str) -> bool:
    return journal(uri).is_file()


def end_left_open(uri: str, end: Callable[[str, str], None]) -> list[str]:
    """End every run the journal of `uri` holds with `end(run_id, status)`; one line per run
    ended. Those that still cannot be ended stay in the journal."""
    path = journal(uri)
    if not path.is_file():
        return []
    ended, kept = [], []
    with _locked(path):
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
                end(entry["run_id"], entry["status"])
            except ValueError:
                continue  # a line cut short by a full disk: nothing to end
            except Exception:  # the store still cannot be written: keep it for later
                kept.append(line)
                continue
            ended.append(f"run {entry['run_id']} ({entry['name']}) ended {entry['status']}")
            label = f"run {entry['run_id']} ({entry['name']})"
            if label in _remembered:
                _remembered.remove(label)
        if kept:
            path.write_text("".join(f"{line}\n" for line in kept))
        else:
            path.unlink()
    return ended


def take_left_open() -> str:
    """One line naming the runs this command (this process and its workers) could not end
    and are still open, or ''."""
    runs = list(dict.fromkeys([*_remembered, *_journalled(os.environ.get(COMMAND))]))
    _remembered.clear()
    if not runs:
        return ""
    return (f"could not end {', '.join(runs)}: they show RUNNING until the next gradkit "
            "command that reaches the store ends them")


def _journalled(command: str | None) -> list[str]:
    """The runs still in any journal that command `command` could not end."""
    if not command:
        return []
    found = []
    for path in sorted(journals().glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("command") == command:
                found.append(f"run {entry['run_id']} ({entry['name']})")
    return found


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.with_suffix(".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
