"""Multiruns: parent runs per MLflow experiment, child runs, the sweep report, failures."""

from __future__ import annotations

import csv
from itertools import product

import pytest
from conftest import CONF_DIR, EXPERIMENTS
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus

from gradkit.sweeps import hydra_compat
from gradkit.sweeps.plan import swept_experiments


def hydra_config(*overrides: str):
    """The composed config with its hydra node; GlobalHydra stays set up for the caller."""
    return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_descent_preset_sweeps_six_learning_rates_by_three_starts():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_config("sweep=descent_lr_start")
        experiments = swept_experiments(cfg)

    params = cfg.hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    values = {o.key_or_group: list(o.sweep_string_iterator()) for o in parsed}
    assert set(values) == {"experiment.learning_rate", "experiment.start"}
    assert len(set(values["experiment.learning_rate"])) == 6
    assert len(set(values["experiment.start"])) == 3
    assert len(list(product(*values.values()))) == 18
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.experiment.function == "rosenbrock"
    assert experiments == ["gradient_descent"]


@pytest.mark.parametrize(("swept", "expected"), [
    ("basic_gradients,jacobian", ["basic_gradients", "jacobian"]),
    ("jacobian,nonexistent,jacobian", ["jacobian"]),
    ("choice(jacobian,computational_graph)", ["jacobian", "computational_graph"]),
    ("glob(*)", EXPERIMENTS),
    ("glob(*,exclude=j*)", [e for e in EXPERIMENTS if not e.startswith("j")]),
])
def test_swept_experiments_from_sweeper_params(swept, expected):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_config("sweep=descent_lr_start",
                           f"+hydra.sweeper.params.experiment='{swept}'")
        assert swept_experiments(cfg) == expected


def test_report_columns_hold_the_parameters_that_vary_among_logged_jobs(tmp_path):
    from gradkit.sweeps.report import _write_csv

    def job(num, params, status="COMPLETED"):
        return {"job": num, "overrides": f"x={num}", "status": status, "outcome": "",
                "run_id": "", "error": "", "params": params,
                "metrics": {"value": float(num)} if params else {}}

    jobs = [job(0, {"x": "0", "seed": "42"}), job(1, {"x": "1", "seed": "42"}),
            job(2, {}, status="FAILED")]
    _write_csv(tmp_path / "jobs.csv", jobs)
    with open(tmp_path / "jobs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["job", "overrides", "status", "outcome", "run_id", "error", "x",
                             "value"]
    assert [(r["x"], r["value"], r["status"]) for r in rows] == [
        ("0", "0.0", "COMPLETED"), ("1", "1.0", "COMPLETED"), ("", "", "FAILED")]


def test_a_failed_jobs_error_is_read_without_hydras_line(capsys):
    """Hydra's `return_value` prints `Error executing job ...` on each read: the sweep's
    record of the job reads the error without adding a second such line."""
    failed = JobReturn(overrides=["x=1"], status=JobStatus.FAILED)
    failed._return_value = ValueError("x=1 is not allowed")

    assert str(hydra_compat.job_error(failed)) == "x=1 is not allowed"
    assert hydra_compat.job_error(JobReturn(status=JobStatus.COMPLETED)) is None
    assert capsys.readouterr().err == ""
