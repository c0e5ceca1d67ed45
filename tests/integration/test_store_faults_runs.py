"""A store on a disk that fills up or turns read-only: one line that says so, never a run
that looks finished."""

from __future__ import annotations

import shutil
import subprocess
from contextlib import suppress
from pathlib import Path

import pytest
from conftest import client_for

from gradkit.reporting import report
from gradkit.tracking.store import Tracker

DISK_KB = 2048


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 2 MB tmpfs (mounting one needs root, as the CI image runs the tests)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_KB}k", "tmpfs",
                              str(disk)], capture_output=True, text=True, check=False)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def new_store(folder: Path, empty_store: Path) -> Path:
    folder.mkdir()
    shutil.copy(empty_store, folder / "mlflow.db")
    return folder


def statuses(store: Path) -> list[str]:
    client = client_for(store)
    ids = [e.experiment_id for e in client.search_experiments()]
    return [r.info.status for r in client.search_runs(ids)]


def fill(disk: Path) -> None:
    """Write to `disk` until it is full."""
    with (disk / "filler").open("ab") as filler, suppress(OSError):
        while True:
            filler.write(b"\0" * 65536)
            filler.flush()


def test_a_disk_full_mid_run_is_one_line_that_says_the_run_could_not_be_ended(
        small_disk, gradkit, empty_store, tmp_path, monkeypatch):
    """The disk fills up as the job's files are copied into the store."""
    store = new_store(small_disk / "store", empty_store)
    copy = Tracker.log_artifacts

    def full_then_copy(self, *args):
        fill(small_disk)
        copy(self, *args)

    monkeypatch.setattr(Tracker, "log_artifacts", full_then_copy)
    code, err = gradkit("experiment=jacobian", f"tracking.root={store}",
                        f"hydra.run.dir={tmp_path / 'run'}")

    assert code == 1
    assert "Traceback" not in err and "SQLAlchemy" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("gradkit: ")]
    assert len(lines) == 2 and len(err.strip().splitlines()) <= 3  # + Hydra's "Error executing"
    assert "No space left on device" in lines[0] and "could not be written either" in lines[0]
    assert lines[1].startswith("gradkit: could not end run ")
    assert lines[1].endswith("they show RUNNING until the next gradkit command that reaches "
                             "the store ends them")
    (small_disk / "filler").unlink()
    assert statuses(store) == ["RUNNING"]  # as the line said: nothing claims FINISHED


def make_read_only(store: Path, disk: Path) -> None:
    """Read-only as users meet it: a read-only mount (root writes anything else)."""
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


def test_a_read_only_store_is_one_line_naming_its_folder(small_disk, gradkit, empty_store,
                                                         tmp_path, capsys):
    store = new_store(small_disk / "store", empty_store)
    make_read_only(store, small_disk)

    code, err = gradkit("experiment=jacobian", f"tracking.root={store}",
                        f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 1
    expected = f"gradkit: tracking.root={store}: the MLflow store there is read-only"
    assert err.strip().splitlines()[-1].startswith(expected), err
    assert "Traceback" not in err

    with pytest.raises(SystemExit) as exit_:
        report.main([f"tracking.root={store}", f"output={tmp_path / 'report'}"])
    err = capsys.readouterr().err
    assert exit_.value.code != 0
    assert err.strip().splitlines() == [err.strip().splitlines()[-1]]
    assert err.strip().startswith(expected)
    assert statuses(store) == []
