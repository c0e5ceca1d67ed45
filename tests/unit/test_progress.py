"""Progress of long work: a bar on a terminal only, log lines at their rate elsewhere, nothing
for short work."""

from __future__ import annotations

import io
import logging

import pytest

from gradkit.lib import progress
from gradkit.lib.progress import duration, job_line, track


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    """A fake clock the loop body moves on."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(total: int, seconds_per_step: float, caplog, **kwargs) -> list[str]:
    """The log lines of a loop of `total` steps taking `seconds_per_step` each, not on a
    terminal."""
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="gradkit"):
        for _ in track(range(total), total, "work", stream=io.StringIO(), clock=clock, **kwargs):
            clock.now += seconds_per_step
    return [r.getMessage() for r in caplog.records]


def test_a_terminal_gets_a_tqdm_bar_and_no_log_lines(monkeypatch, caplog):
    monkeypatch.setattr(progress, "DELAY", 0.0)
    screen = Terminal()
    with caplog.at_level(logging.INFO, logger="gradkit"):
        assert list(track(range(50), 50, "work", stream=screen)) == list(range(50))

    assert screen.getvalue().startswith("\rwork:   0%|")  # the bar, cleared at the end
    assert "0/50 [" in screen.getvalue()
    assert caplog.records == []


def test_elsewhere_no_bar_is_made(monkeypatch, caplog):
    def no_bar(*args, **kwargs):
        raise AssertionError("tqdm used off a terminal")

    monkeypatch.setattr(progress, "tqdm", no_bar)
    log_file = io.StringIO()
    lines = run(100, 1.0, caplog)
    assert list(track(range(3), 3, "work", stream=log_file)) == [0, 1, 2]

    assert lines and log_file.getvalue() == ""
    assert not any("\r" in line for line in lines)


def test_a_worker_process_logs_lines_even_on_a_terminal(monkeypatch):
    assert progress.on_terminal(Terminal())
    monkeypatch.setattr(progress.multiprocessing, "parent_process", lambda: object())

    assert not progress.on_terminal(Terminal())


def test_work_under_the_thresholds_shows_nothing(monkeypatch, caplog):
    screen = Terminal()
    assert list(track(range(10_000), 10_000, "work", stream=screen)) == list(range(10_000))

    assert screen.getvalue() == ""  # done within DELAY = 2 s
    assert run(100, 0.045, caplog) == []  # 4.5 s: under INTERVAL = 5 s


def test_a_line_every_tenth_when_the_tenth_takes_longer_than_the_interval(caplog):
    lines = run(100, 1.0, caplog)  # a tenth takes 10 s

    assert lines[0] == "work: 10 of 100 steps (10%), 10 s so far, about 1 min 30 s left"
    assert [line.split()[1] for line in lines[:-1]] == [str(n) for n in range(10, 100, 10)]
    assert lines[-1] == "work: 100 of 100 steps in 1 min 40 s"


def test_a_line_every_interval_when_a_tenth_is_quicker(caplog):
    lines = run(960, 1 / 64, caplog)  # 15 s in all, a tenth in 1.5 s: a line each 5 s

    assert lines == ["work: 320 of 960 steps (33%), 5 s so far, about 10 s left",
                     "work: 640 of 960 steps (67%), 10 s so far, about 5 s left",
                     "work: 960 of 960 steps in 15 s"]


def test_a_loop_stopped_early_says_where(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="gradkit"):
        for i in track(range(100), 100, "range test", stream=io.StringIO(), clock=clock):
            clock.now += 1.0
            if i == 56:
                break

    assert caplog.records[-1].getMessage() == "range test: 57 of 100 steps in 57 s"


def test_without_a_total_a_line_every_interval(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="gradkit"):
        for _ in track(iter(range(12)), None, "work", "batches", io.StringIO(), clock):
            clock.now += 1.0

    assert [r.getMessage() for r in caplog.records] == [
        "work: 5 batches, 5 s so far", "work: 10 batches, 10 s so far", "work: 12 batches in 12 s"]


@pytest.mark.parametrize(("seconds", "says"), [
    (0.4, "0 s"), (45.2, "45 s"), (60, "1 min"), (80, "1 min 20 s"), (3600, "1 h"),
    (7500, "2 h 5 min")])
def test_durations_read_as_a_person_says_them(seconds, says):
    assert duration(seconds) == says


def test_a_job_line_estimates_the_time_left_from_the_jobs_done():
    assert job_line(4, 18, "gradient_descent learning_rate=0.01", 16.0, 3) == (
        "job 4 of 18 (gradient_descent learning_rate=0.01), about 1 min 20 s left")
    assert job_line(1, 18, "hessian defaults", 0.3, 0) == "job 1 of 18 (hessian defaults)"
    assert job_line(7, None, "search", 60.0, 6) == "job 7 (search)"
