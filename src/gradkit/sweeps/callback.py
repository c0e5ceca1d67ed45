"""The sweep callback: parent runs created before any job, job records, the report at the end.

Jobs may run in other processes or on other machines, so everything a job needs from the
sweep (parent run ids) and everything the report needs from a job (status, error) passes
through files in the sweep directory, never through memory. Records live under the sweep's
id, so a reused sweep directory never mixes two sweeps.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from gradkit.core.components import locate
from gradkit.core.reproducibility import fingerprint
from gradkit.core.settings import read_settings
from gradkit.core.validation import ConfigError
from gradkit.lib.progress import job_line
from gradkit.sweeps import closing, hydra_compat, submitit_compat
from gradkit.sweeps.plan import grid, plan_jobs, swept_experiments
from gradkit.sweeps.report import COMPLETED, report_sweep
from gradkit.sweeps.summary import summary_lines
from gradkit.tracking.store import Tracker, experiment_tags, run_name, store_reason

log = logging.getLogger("gradkit")
SUBMITIT_LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
STATE_DIR = ".gradkit"


def _state_file(sweep_dir: Path) -> Path:
    return sweep_dir / STATE_DIR / "sweep.json"


def _records_dir(sweep_dir: Path, sweep_id: str) -> Path:
    return sweep_dir / STATE_DIR / sweep_id


def _read_records(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """The records the sweep's jobs left as they ended."""
    return [json.loads(path.read_text())
            for path in _records_dir(sweep["dir"], sweep["id"]).glob("*.json")]


def _jobs_of(jobs: list[dict[str, Any]] | None, experiment: str) -> int | None:
    """How many planned jobs run `experiment` (None when the sweeper plans as it goes)."""
    return None if jobs is None else sum(job["experiment"] == experiment for job in jobs)


def _described(jobs: list[dict[str, Any]] | None, experiment: str) -> dict[str, str]:
    """The MLflow experiment tags of `experiment`'s class, from the planned jobs (none
    without a plan: its first job sets them)."""
    target = next((job["target"] for job in jobs or [] if job["experiment"] == experiment
                   and job["target"]), "")
    return experiment_tags(locate("experiment._target_", target)) if target else {}


@dataclass(frozen=True)
class SweepJob:
    """A job's view of the sweep it belongs to."""

    sweep_dir: Path
    job_num: int
    parallel_jobs: int | None
    state: dict[str, Any]

    @classmethod
    def current(cls, hydra_cfg: DictConfig) -> SweepJob:
        sweep_dir = Path(hydra_cfg.sweep.dir)
        state_file = _state_file(sweep_dir)
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        n_jobs = hydra_cfg.launcher.get("n_jobs")
        if isinstance(n_jobs, int) and n_jobs <= 0:
            n_jobs = os.cpu_count()
        return cls(sweep_dir, int(hydra_cfg.job.num), n_jobs, state)

    @property
    def tags(self) -> dict[str, str]:
        return {"sweep_id": self.state.get("sweep_id", ""), "job_num": str(self.job_num)}

    def parent_run_id(self, experiment: str) -> str | None:
        return self.state.get("parents", {}).get(experiment)


_open_sweeps: list[SweepTracker] = []  # sweeps this process started and has not yet ended


def print_summary(sweep: dict[str, Any]) -> None:
    """The sweep's summary on stdout: a line per job, then where to look (nothing if the
    store cannot be read any more)."""
    records = _read_records(sweep)
    try:
        lines = summary_lines(sweep["tracker"], sweep["id"], records, sweep["parents"],
                              sweep["dir"])
    except Exception as error:  # the runs are logged; only the summary is lost
        log.warning("no summary: the store could not be read (%s)", store_reason(error))
        return
    print("\n".join(lines), flush=True)


def runs_here() -> bool:
    """Whether this process holds a sweep open: its jobs run here (the basic launcher), not
    in workers (joblib, submitit)."""
    return bool(_open_sweeps)


def end_open_sweeps(interrupted: bool) -> list[str]:
    """End every sweep this process started and has not ended; one line about each parent."""
    return [line for sweep in list(_open_sweeps) for line in sweep.end(interrupted=interrupted)]


class SweepTracker(Callback):
    """Hydra callback: one parent run per swept experiment, finished with a sweep report."""

    def __init__(self) -> None:
        self._sweep: dict[str, Any] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check every key and job, open the store and the parents: all before any job.

        An experiment with a single job in the sweep gets no parent: it is a plain run,
        tagged with the sweep's id (`make run` runs every experiment once this way).

        Hydra turns a callback's exceptions into warnings and goes on, so a bad sweep exits
        here after one line (SystemExit passes through Hydra).
        """
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        started = datetime.now()
        sweep_id = started.strftime("%Y%m%d-%H%M%S-%f")
        choices = config.hydra.runtime.choices
        preset = choices.get("sweep") or choices.get("search") or "sweep"
        name = f"{preset} {started:%Y-%m-%d %H:%M:%S.%f}"
        tags = {**fingerprint(Path(config.hydra.runtime.cwd)), "sweep_id": sweep_id,
                "sweep_dir": str(sweep_dir),
                "overrides": " ".join(config.hydra.overrides.task)}
        if config.hydra.launcher.get("_target_") == SUBMITIT_LOCAL and \
                not submitit_compat.isolate_controllers():
            log.warning("this submitit version's local jobs are not stopped with the command "
                        "(gradkit knows submitit %s): stop them by hand if you stop it",
                        " ".join(submitit_compat.SUPPORTED))
        try:
            settings = read_settings(config)
            jobs = plan_jobs(config)
            tracker = Tracker.from_config(config.tracking, base=Path(config.hydra.runtime.cwd))
            parents: dict[str, str] = {}
            self._sweep = {"dir": sweep_dir, "id": sweep_id, "parents": parents, "jobs": jobs,
                           "tracker": tracker, "dpi": settings.dpi}
            _open_sweeps.append(self)  # from here on, an interruption still ends the parents
            swept = grid(config)
            for experiment in swept_experiments(config):
                if _jobs_of(jobs, experiment) != 1:
                    parents[experiment] = tracker.start_run(experiment, name, tags, None,
                                                            _described(jobs, experiment))
                    tracker.log_batch(parents[experiment], params=swept)
        except ConfigError as error:
            print(f"gradkit: {error}", file=sys.stderr)
            raise SystemExit(1) from None
        state_file = _state_file(sweep_dir)
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps({"sweep_id": sweep_id, "parents": parents}))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A line as each job of a sweep starts: job k of N and the time left at the pace of
        the jobs that ended so far (their records), since the sweep's state was written. In
        joblib's or submitit's workers it runs there, logged to the worker's output."""
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        state_file = _state_file(Path(config.hydra.sweep.dir).resolve())
        if not state_file.exists():
            return
        records = _records_dir(state_file.parents[1], json.loads(state_file.read_text())
                               ["sweep_id"])
        jobs = (self._sweep or {}).get("jobs")
        label = (f"{config.hydra.runtime.choices.experiment} "
                 f"{run_name(list(config.hydra.overrides.task))}")
        log.info(job_line(int(config.hydra.job.num) + 1, None if jobs is None else len(jobs),
                          label, time.time() - state_file.stat().st_mtime,
                          len(list(records.glob("*.json")))))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        if not _state_file(sweep_dir).exists():
            return
        sweep_id = json.loads(_state_file(sweep_dir).read_text())["sweep_id"]
        raised = hydra_compat.job_error(job_return)
        error = "" if raised is None else f"{type(raised).__name__}: {raised}"
        overrides = list(config.hydra.overrides.task)
        record = {
            "job": int(config.hydra.job.num),
            "experiment": config.hydra.runtime.choices.experiment,
            "target": config.experiment.get("_target_", ""),
            "overrides": run_name(overrides),
            "command": overrides,
            "status": job_return.status.name,
            "error": error,
            "output_dir": str(config.hydra.runtime.output_dir),  # for reports reading job files
        }
        job_file = _records_dir(sweep_dir, sweep_id) / f"{record['job']}.json"
        job_file.parent.mkdir(parents=True, exist_ok=True)
        job_file.write_text(json.dumps(record))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = self._sweep
        for line in self.end(interrupted=False):
            log.info(line)
        if sweep is not None:
            print_summary(sweep)

    def end(self, interrupted: bool) -> list[str]:
        """Report and end the parents once; one line about each, and, when interrupted, one
        about the whole sweep (its one-job experiments have no parent to say it)."""
        if self._sweep is None or self not in _open_sweeps:
            return []
        if interrupted:  # the jobs still running in submitit's local processes end first
            submitit_compat.stop_controllers()
        closing.close_open()  # the last jobs' runs, before the report reads them
        _open_sweeps.remove(self)
        sweep = self._sweep
        records = _read_records(sweep)
        lines = report_sweep(sweep["tracker"], sweep["parents"], sweep["jobs"], records,
                             sweep["dir"], sweep["dpi"], interrupted)
        if interrupted and sweep["jobs"] is not None:
            done = sum(record["status"] == COMPLETED for record in records)
            lines.append(f"{done} of {len(sweep['jobs'])} jobs of sweep {sweep['id']} completed")
        return lines


