"""Multirun tracking: parent runs created before any job, job records, the sweep report.

Jobs may run in other processes or on other machines, so everything a job needs from the
sweep (parent run ids) and everything the report needs from a job (status, error) passes
through files in the sweep directory, never through memory. Records live under the sweep's
id, so a reused sweep directory never mixes two sweeps.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gradkit import closing, compositions
from gradkit.errors import explain, one_line
from gradkit.experiment import Experiment
from gradkit.plotting import save
from gradkit.runtime import read_settings
from gradkit.tracking import Tracker, run_name
from gradkit.validation import ConfigError

log = logging.getLogger("gradkit")
STATE_DIR = ".gradkit"
BASIC_SWEEPERS = ("hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                  "hydra_plugins.gradkit_sweeper.PlannedSweeper")
COMPLETED = JobStatus.COMPLETED.name


def _state_file(sweep_dir: Path) -> Path:
    return sweep_dir / STATE_DIR / "sweep.json"


def _records_dir(sweep_dir: Path, sweep_id: str) -> Path:
    return sweep_dir / STATE_DIR / sweep_id


def _sweep_overrides(config: DictConfig) -> list[str]:
    """The sweeper's params followed by the command line's overrides, as the sweeper reads them."""
    params = config.hydra.sweeper.get("params") or {}
    return [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)


def swept_experiments(config: DictConfig) -> list[str]:
    """The known experiment options a multirun will run, from its overrides and sweeper params.

    Unknown options are left out: the sweep's job plan refuses them before any job.
    """
    available = GlobalHydra.instance().config_loader().get_group_options("experiment")
    chosen = [OmegaConf.select(config, "hydra.runtime.choices.experiment", default=None)]
    for override in OverridesParser.create().parse_overrides(_sweep_overrides(config)):
        if override.key_or_group != "experiment":
            continue
        if isinstance(override.value(), Glob):
            chosen = override.value().filter(available)
        elif override.is_sweep_override():
            chosen = list(override.sweep_string_iterator())
        else:
            chosen = [override.value()]
    return [name for name in dict.fromkeys(chosen) if name in available]


def plan_jobs(config: DictConfig) -> list[dict[str, Any]] | None:
    """Every job of a basic-sweeper multirun, in Hydra's order, checked before any job runs.

    Composition depends on the config-group choices (experiment=, tracking=, ...), not on
    plain values, so one job per distinct combination of group choices is composed: an
    unknown option or a misspelt key raises a ConfigError naming the job's overrides, and
    the sweep stops before anything is written. Other sweepers choose their jobs as they
    go: None.
    """
    if config.hydra.sweeper.get("_target_") not in BASIC_SWEEPERS:
        return None
    loader = GlobalHydra.instance().config_loader()
    try:
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(
            _sweep_overrides(config))
    except HydraException as error:
        raise ConfigError(one_line(str(error))) from None
    groups = {o.key_or_group for o in parsed if loader.get_group_options(o.key_or_group)}
    composed: dict[tuple[str, ...], tuple[tuple[str, ...], DictConfig]] = {}
    jobs, configs = [], {}
    compositions.plan(groups, configs)  # nothing planned until every job composes
    for num, overrides in enumerate(job for batch in BasicSweeper.split_arguments(parsed, None)
                                    for job in batch):
        choices = tuple(o for o in overrides if o.split("=")[0].lstrip("+~") in groups)
        if choices not in composed:
            try:
                composed[choices] = tuple(overrides), loader.load_sweep_config(config,
                                                                               list(overrides))
            except (HydraException, OmegaConfBaseException) as error:
                raise ConfigError(f"job #{num} ({' '.join(overrides)}): "
                                  f"{explain(error, list(overrides))}") from None
        configs[tuple(overrides)] = composed[choices]
        job = composed[choices][1]
        jobs.append({"job": num, "experiment": job.hydra.runtime.choices.experiment,
                     "target": job.experiment.get("_target_", ""),
                     "overrides": run_name(list(overrides)), "command": list(overrides)})
    compositions.plan(groups, configs)
    return jobs


def _jobs_of(jobs: list[dict[str, Any]] | None, experiment: str) -> int | None:
    """How many planned jobs run `experiment` (None when the sweeper plans as it goes)."""
    return None if jobs is None else sum(job["experiment"] == experiment for job in jobs)


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
        tags = {"sweep_id": sweep_id, "sweep_dir": str(sweep_dir),
                "overrides": " ".join(config.hydra.overrides.task)}
        try:
            settings = read_settings(config)
            jobs = plan_jobs(config)
            tracker = Tracker.from_config(config.tracking, base=Path(config.hydra.runtime.cwd))
            parents: dict[str, str] = {}
            self._sweep = {"dir": sweep_dir, "id": sweep_id, "parents": parents, "jobs": jobs,
                           "tracker": tracker, "dpi": settings.dpi}
            _open_sweeps.append(self)  # from here on, an interruption still ends the parents
            for experiment in swept_experiments(config):
                if _jobs_of(jobs, experiment) != 1:
                    parents[experiment] = tracker.start_run(experiment, name, tags)
        except ConfigError as error:
            print(f"gradkit: {error}", file=sys.stderr)
            raise SystemExit(1) from None
        state_file = _state_file(sweep_dir)
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps({"sweep_id": sweep_id, "parents": parents}))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        if not _state_file(sweep_dir).exists():
            return
        sweep_id = json.loads(_state_file(sweep_dir).read_text())["sweep_id"]
        error = ""
        if job_return.status != JobStatus.COMPLETED:  # the exception, read without re-raising
            raised = job_return._return_value
            error = f"{type(raised).__name__}: {raised}"
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
        for line in self.end(interrupted=False):
            log.info(line)

    def end(self, interrupted: bool) -> list[str]:
        """Report and end the parents once; one line about each, and, when interrupted, one
        about the whole sweep (its one-job experiments have no parent to say it)."""
        if self._sweep is None or self not in _open_sweeps:
            return []
        closing.close_open()  # the last jobs' runs, before the report reads them
        _open_sweeps.remove(self)
        sweep = self._sweep
        records = [json.loads(path.read_text())
                   for path in _records_dir(sweep["dir"], sweep["id"]).glob("*.json")]
        lines = report_sweep(sweep["tracker"], sweep["parents"], sweep["jobs"], records,
                             sweep["dir"], sweep["dpi"], interrupted)
        if interrupted and sweep["jobs"] is not None:
            done = sum(record["status"] == COMPLETED for record in records)
            lines.append(f"{done} of {len(sweep['jobs'])} jobs of sweep {sweep['id']} completed")
        return lines


def report_sweep(tracker: Tracker, parents: dict[str, str], plan: list[dict[str, Any]] | None,
                 records: list[dict[str, Any]], sweep_dir: Path, dpi: int,
                 interrupted: bool) -> list[str]:
    """Log each parent's report (CSV, comparison figure, rerun commands) and end it.

    Every planned job has a row: its record's status, KILLED when it was stopped while
    running, NOT_RUN when it never started. A parent is FINISHED only if all its jobs
    completed; `sweep_stopped` says why jobs are missing, and is absent when all ran.
    """
    lines = []
    for experiment, parent in parents.items():
        try:
            lines.append(_report_parent(tracker, experiment, parent, plan, records, sweep_dir,
                                        dpi, interrupted))
        except Exception as error:  # e.g. a failing store: say so, the other parents still end
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            lines.append(f"sweep parent {parent} ({experiment}) could not be reported: "
                         f"{type(error).__name__}: {reason}")
    return lines


def _report_parent(tracker: Tracker, experiment: str, parent: str,
                   plan: list[dict[str, Any]] | None, records: list[dict[str, Any]],
                   sweep_dir: Path, dpi: int, interrupted: bool) -> str:
    jobs: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    try:
        jobs = _job_rows(tracker, experiment, parent, plan, records)
        failed = [job for job in jobs if job["status"] != COMPLETED]
        missing = [job for job in jobs if job["status"] in ("KILLED", "NOT_RUN")]
        _log_report(tracker, parent, jobs, sweep_dir / "report" / experiment, dpi)
        tracker.log_metrics(parent, {"jobs": len(jobs), "jobs_failed": len(failed)})
        if failed:
            names = "; ".join(f"#{job['job']} {job['overrides']} ({job['status']})"
                              for job in failed)
            tracker.set_tags(parent, {"failed_jobs": names})
        if missing or (interrupted and not jobs):
            tracker.set_tags(parent, {"sweep_stopped": "interrupted" if interrupted
                                      else "a job failed"})
    finally:  # a parent never stays RUNNING, even if its report cannot be made
        status = "FINISHED" if jobs and not failed else "FAILED"
        tracker.end(parent, status)
    return (f"sweep parent {parent} ({experiment}) ended {status}: {len(jobs) - len(failed)} "
            f"of {len(jobs)} jobs completed, {len(missing)} killed or not run")


def _job_rows(tracker: Tracker, experiment: str, parent: str,
              plan: list[dict[str, Any]] | None,
              records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per job of `experiment`: planned or recorded, joined with its MLflow run.

    A child run still RUNNING belongs to a job that was stopped: it is ended KILLED here.
    """
    runs = {run.data.tags.get("job_num"): run for run in tracker.child_runs(experiment, parent)}
    recorded = {record["job"]: record for record in records}
    jobs = {job["job"]: job for job in plan or []} | recorded
    if plan is None:  # no plan: the jobs are those that left a record or a run
        jobs |= {int(num): {"job": int(num), "experiment": experiment, "target": "",
                            "overrides": run.info.run_name, "command": []}
                 for num, run in runs.items() if num is not None and int(num) not in jobs}
    rows = []
    for num in sorted(jobs):
        job = jobs[num]
        if job["experiment"] != experiment:
            continue
        run = runs.get(str(num))
        status = job.get("status") or ("KILLED" if run else "NOT_RUN")
        error = job.get("error", "")
        if run and run.info.status == "RUNNING":
            tracker.set_tags(run.info.run_id, {"error": "stopped with the sweep"})
            tracker.end(run.info.run_id, "KILLED")
            status = "KILLED"
        elif run and run.info.status == "FAILED" and status == COMPLETED:  # failed closing
            status, error = "FAILED", run.data.tags.get("error", "")
        rows.append({
            **job,
            "status": status,
            "error": error,
            "run_id": run.info.run_id if run else "",
            "outcome": run.data.tags.get("status", "") if run else "",
            "params": dict(run.data.params) if run else {},
            "metrics": dict(run.data.metrics) if run else {},
        })
    return rows


def _log_report(tracker: Tracker, parent: str, jobs: list[dict[str, Any]], folder: Path,
                dpi: int) -> None:
    """Write and log `jobs.csv`, the comparison figure and `rerun.sh` for jobs to redo."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(folder / "jobs.csv", jobs)
    tracker.log_artifact(parent, folder / "jobs.csv", "report")
    redo = [job for job in jobs if job["status"] != COMPLETED and job["command"]]
    if redo:
        commands = [f"# {len(redo)} job(s) that did not complete, each as a single run"]
        commands += [" ".join(["python -m gradkit.run", *map(shlex.quote, job["command"]),
                               "hydra.mode=RUN"]) for job in redo]
        (folder / "rerun.sh").write_text("\n".join(commands) + "\n")
        tracker.log_artifact(parent, folder / "rerun.sh", "report")
    target = next((job["target"] for job in jobs if job["target"]), "")
    figure_of = get_class(target).sweep_figure if target else Experiment.sweep_figure
    fig = figure_of(jobs) if jobs else None
    if fig is not None:
        tracker.log_artifact(parent, save(fig, folder / "comparison.png", dpi), "report")


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
