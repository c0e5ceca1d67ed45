"""What a sweep prints when it ends: a line per job, then for each parent where to look."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gradkit.sweeps.report import COMPLETED
from gradkit.tracking.store import RunRecord, Tracker


def job_line(record: dict[str, Any], run: RunRecord | None, width: int) -> str:
    """`#3  jacobian  point=[1,2,3]  COMPLETED  objective=4.69  checks=passed`."""
    objective = run.metrics.get("objective", math.nan) if run else math.nan
    checks = run.tags.get("checks", "not run") if run else "not run"
    shown = record["overrides"] if record["overrides"] != "defaults" else ""
    status = record["status"] if record["status"] == COMPLETED or not record.get("error") \
        else f"{record['status']} ({record['error'].splitlines()[0][:80]})"
    return (f"  #{record['job']:<3} {record['experiment']:<{width}} {shown:<36} {status:<10} "
            f"objective={objective:.6g}  checks={checks}")


def summary_lines(tracker: Tracker, sweep_id: str, records: list[dict[str, Any]],
                  parents: dict[str, str], sweep_dir: Path) -> list[str]:
    """A line per job (its experiment, overrides, status, objective, checks), then each
    parent's UI link, comparison figure and best job."""
    found = tracker.search_runs(list(tracker.experiments().values()),
                                f"tags.sweep_id = '{sweep_id}'")
    runs = {run.tags.get("job_num"): run for run in found}
    by_id = {run.id: run for run in found}
    records = sorted(records, key=lambda record: record["job"])
    width = max((len(record["experiment"]) for record in records), default=0)
    lines = [f"{len(records)} jobs:"]
    lines += [job_line(record, runs.get(str(record["job"])), width) for record in records]
    for experiment, parent in parents.items():
        lines.append(f"{experiment}: {tracker.describe(parent, experiment)}")
        figure = sweep_dir / "report" / experiment / "comparison.png"
        if figure.is_file():
            lines.append(f"  comparison figure: {figure}")
        best = by_id.get(parent)  # the sweep report tagged it with its best job
        if best is not None and "best_job" in best.tags:
            lines.append(f"  best job (lowest objective): {best.tags['best_job']}, "
                         f"objective={best.metrics['best_objective']:.6g}, "
                         f"run {best.tags['best_run_id']}")
    return lines
