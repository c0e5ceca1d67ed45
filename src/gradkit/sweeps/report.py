"""The sweep report: every job's row joined with its run, the comparison figure, the
commands that rerun what did not complete, and each parent ended with the right status."""

from __future__ import annotations

import csv
import math
import shlex
from pathlib import Path
from typing import Any

from hydra.core.utils import JobStatus
from hydra.utils import get_class

from gradkit.core.experiment import Experiment
from gradkit.plotting import save
from gradkit.tracking.store import Tracker, store_reason

COMPLETED = JobStatus.COMPLETED.name


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
            lines.append(f"sweep parent {parent} ({experiment}) could not be reported: "
                         f"{type(error).__name__}: {store_reason(error)}")
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
        best = best_row(jobs)
        if best is not None:
            tracker.log_metrics(parent, {"best_objective": best["metrics"]["objective"]})
            tracker.set_tags(parent, {"best_run_id": best["run_id"],
                                      "best_job": f"#{best['job']} {best['overrides']}"})
        if failed:
            names = "; ".join(f"#{job['job']} {job['overrides']} ({job['status']})"
                              for job in failed)
            tracker.set_tags(parent, {"failed_jobs": names})
        if missing or (interrupted and not jobs):
            tracker.set_tags(parent, {"sweep_stopped": "interrupted" if interrupted
                                      else "a job failed"})
    finally:  # a parent never stays RUNNING, even if its report cannot be made
        status = "FINISHED" if jobs and not failed else "FAILED"
        tracker.end(parent, status, f"sweep parent of {experiment}")
    return (f"sweep parent {parent} ({experiment}) ended {status}: {len(jobs) - len(failed)} "
            f"of {len(jobs)} jobs completed, {len(missing)} killed or not run")


def best_row(jobs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The completed job with the lowest finite objective (None if none has one)."""
    scored = [job for job in jobs if job["status"] == COMPLETED and job["run_id"]
              and math.isfinite(job["metrics"].get("objective", math.nan))]
    return min(scored, key=lambda job: job["metrics"]["objective"], default=None)


def _job_rows(tracker: Tracker, experiment: str, parent: str,
              plan: list[dict[str, Any]] | None,
              records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per job of `experiment`: planned or recorded, joined with its MLflow run.

    A child run still RUNNING belongs to a job that was stopped: it is ended KILLED here.
    """
    runs = {run.tags.get("job_num"): run for run in tracker.child_runs(experiment, parent)}
    recorded = {record["job"]: record for record in records}
    jobs = {job["job"]: job for job in plan or []} | recorded
    if plan is None:  # no plan: the jobs are those that left a record or a run
        jobs |= {int(num): {"job": int(num), "experiment": experiment, "target": "",
                            "overrides": run.name, "command": []}
                 for num, run in runs.items() if num is not None and int(num) not in jobs}
    rows = []
    for num in sorted(jobs):
        job = jobs[num]
        if job["experiment"] != experiment:
            continue
        run = runs.get(str(num))
        status = job.get("status") or ("KILLED" if run else "NOT_RUN")
        error = job.get("error", "")
        if run and run.status == "RUNNING":
            tracker.set_tags(run.id, {"error": "stopped with the sweep"})
            tracker.end(run.id, "KILLED", run.name)
            status = "KILLED"
        elif run and run.status == "FAILED" and status == COMPLETED:  # failed closing
            status, error = "FAILED", run.tags.get("error", "")
        rows.append({
            **job,
            "status": status,
            "error": error,
            "run_id": run.id if run else "",
            "outcome": run.tags.get("status", "") if run else "",
            "params": dict(run.params) if run else {},
            "metrics": dict(run.metrics) if run else {},
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
        commands += [" ".join(["gradkit run", *map(shlex.quote, job["command"]),
                               "hydra.mode=RUN"]) for job in redo]
        (folder / "rerun.sh").write_text("\n".join(commands) + "\n")
        tracker.log_artifact(parent, folder / "rerun.sh", "report")
    target = next((job["target"] for job in jobs if job["target"]), "")
    figure_of = get_class(target).sweep_figure if target else Experiment.sweep_figure
    fig = figure_of(jobs) if jobs else None
    if fig is not None:  # in report/, and at the top where MLflow's artifact view opens
        comparison = save(fig, folder / "comparison.png", dpi)
        tracker.log_artifact(parent, comparison, "report")
        tracker.log_artifact(parent, comparison, None)


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
