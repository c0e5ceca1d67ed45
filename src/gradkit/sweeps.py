"""Multirun tracking: parent runs created before any job, job records, the sweep report.

Jobs may run in other processes or on other machines, so everything a job needs from the
sweep (parent run ids) and everything the report needs from a job (status, error) passes
through files in the sweep directory, never through memory.
"""

from __future__ import annotations

import atexit
import csv
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from gradkit.experiment import Experiment
from gradkit.plotting import save
from gradkit.tracking import Tracker, run_name

STATE_DIR = ".gradkit"


def _state_file(sweep_dir: Path) -> Path:
    return sweep_dir / STATE_DIR / "sweep.json"


def _job_file(sweep_dir: Path, job_num: int) -> Path:
    return sweep_dir / STATE_DIR / "jobs" / f"{job_num}.json"


def swept_experiments(config: DictConfig) -> list[str]:
    """The known experiment options a multirun will run, from its overrides and sweeper params.

    Unknown options are left out: Hydra itself stops the sweep at the job that names one.
    """
    params = config.hydra.sweeper.get("params") or {}
    overrides = [f"{key}={value}" for key, value in params.items()]
    overrides += list(config.hydra.overrides.task)
    available = GlobalHydra.instance().config_loader().get_group_options("experiment")
    chosen = [OmegaConf.select(config, "hydra.runtime.choices.experiment", default=None)]
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.key_or_group != "experiment":
            continue
        if isinstance(override.value(), Glob):
            chosen = override.value().filter(available)
        elif override.is_sweep_override():
            chosen = list(override.sweep_string_iterator())
        else:
            chosen = [override.value()]
    return [name for name in dict.fromkeys(chosen) if name in available]


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


class SweepTracker(Callback):
    """Hydra callback: one parent run per swept experiment, finished with a sweep report."""

    def __init__(self) -> None:
        self._sweep_dir: Path | None = None
        self._finished = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        experiments = swept_experiments(config)
        tracker = Tracker.from_config(config.tracking)  # creates the store before any job
        started = datetime.now()
        sweep_id = started.strftime("%Y%m%d-%H%M%S-%f")
        preset = config.hydra.runtime.choices.get("sweep") or "sweep"
        name = f"{preset} {started:%Y-%m-%d %H:%M:%S}"
        tags = {"sweep_id": sweep_id, "sweep_dir": str(sweep_dir),
                "overrides": " ".join(config.hydra.overrides.task)}
        parents = {exp: tracker.start_run(exp, name, tags) for exp in experiments}
        state_file = _state_file(sweep_dir)
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps({"sweep_id": sweep_id, "parents": parents}))
        self._sweep_dir = sweep_dir
        # Hydra skips on_multirun_end when a job raises: finish the parents at exit instead.
        atexit.register(self._finish, config)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        error = ""
        if job_return.status != JobStatus.COMPLETED:
            try:
                job_return.return_value  # noqa: B018 - raises the job's exception
            except Exception as raised:
                error = f"{type(raised).__name__}: {raised}"
        record = {
            "job": int(config.hydra.job.num),
            "experiment": config.hydra.runtime.choices.experiment,
            "target": config.experiment.get("_target_", ""),
            "overrides": run_name(list(config.hydra.overrides.task)),
            "status": job_return.status.name,
            "error": error,
            "output_dir": str(config.hydra.runtime.output_dir),  # for reports reading job files
        }
        job_file = _job_file(sweep_dir, record["job"])
        job_file.parent.mkdir(parents=True, exist_ok=True)
        job_file.write_text(json.dumps(record))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish(config, completed=True)

    def _finish(self, config: DictConfig, completed: bool = False) -> None:
        if self._finished or self._sweep_dir is None:
            return
        self._finished = True
        report_sweep(self._sweep_dir, Tracker.from_config(config.tracking),
                     int(config.plotting.dpi), completed)


def report_sweep(sweep_dir: Path, tracker: Tracker, dpi: int, completed: bool) -> None:
    """Log each parent's report (CSV + comparison figure) and end it FINISHED or FAILED.

    A parent is FINISHED only if the sweep completed and every one of its jobs succeeded.
    """
    state = json.loads(_state_file(sweep_dir).read_text())
    records = [json.loads(p.read_text()) for p in (sweep_dir / STATE_DIR / "jobs").glob("*.json")]
    for experiment, parent in state["parents"].items():
        jobs = _job_rows(tracker, experiment, parent, records)
        failed = [job for job in jobs if job["status"] != "COMPLETED"]
        try:
            _log_report(tracker, parent, jobs, sweep_dir / "report" / experiment, dpi)
            tracker.log_metrics(parent, {"jobs": len(jobs), "jobs_failed": len(failed)})
            if failed:
                names = "; ".join(f"#{job['job']} {job['overrides']}" for job in failed)
                tracker.set_tags(parent, {"failed_jobs": names})
            if not completed:
                tracker.set_tags(parent, {"sweep_stopped": "the sweep ended on an error"})
        finally:  # a parent never stays RUNNING, even if its report cannot be made
            tracker.end(parent, "FINISHED" if completed and jobs and not failed else "FAILED")


def _log_report(tracker: Tracker, parent: str, jobs: list[dict[str, Any]], folder: Path,
                dpi: int) -> None:
    """Write and log `jobs.csv` and the experiment's comparison figure."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(folder / "jobs.csv", jobs)
    tracker.log_artifact(parent, folder / "jobs.csv", "report")
    target = next((job["target"] for job in jobs if job["target"]), "")
    figure_of = get_class(target).sweep_figure if target else Experiment.sweep_figure
    fig = figure_of(jobs) if jobs else None
    if fig is not None:
        tracker.log_artifact(parent, save(fig, folder / "comparison.png", dpi), "report")


def _job_rows(tracker: Tracker, experiment: str, parent: str,
              records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per job of `experiment`: its record joined with its MLflow run."""
    runs = {run.data.tags.get("job_num"): run for run in tracker.child_runs(experiment, parent)}
    rows = []
    for record in sorted(records, key=lambda r: r["job"]):
        if record["experiment"] != experiment:
            continue
        run = runs.get(str(record["job"]))
        rows.append({
            **record,
            "run_id": run.info.run_id if run else "",
            "outcome": run.data.tags.get("status", "") if run else "",
            "params": dict(run.data.params) if run else {},
            "metrics": dict(run.data.metrics) if run else {},
        })
    return rows


def _write_csv(path: Path, jobs: list[dict[str, Any]]) -> None:
    logged = [job["params"] for job in jobs if job["params"]]  # failed early: no params
    varying = sorted({key for params in logged for key in params
                      if len({p.get(key) for p in logged}) > 1})
    metrics = sorted({key for job in jobs for key in job["metrics"]})
    fields = ["job", "overrides", "status", "outcome", "run_id", "error", *varying, *metrics]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for job in jobs:
            writer.writerow({**{key: job[key] for key in fields[:6]},
                             **{key: job["params"].get(key, "") for key in varying},
                             **{key: job["metrics"].get(key, "") for key in metrics}})
