"""The entry point: compose the config, then seed -> instantiate -> run -> track."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gradkit import sweeps
from gradkit.experiment import Experiment, Result
from gradkit.reproducibility import PROJECT_ROOT, fingerprint
from gradkit.runtime import build_context, weights_cache_dir
from gradkit.tracking import Tracker, flatten, run_name
from gradkit.validation import ConfigError

log = logging.getLogger("gradkit")


class BadConfig(CompactHydraException):
    """A config value that cannot be used (printed as one line, no traceback)."""


class ChecksFailed(CompactHydraException):
    """A demonstration's identity did not hold: a bug, so the job fails."""


def build_experiment(cfg: DictConfig) -> Experiment:
    try:
        return hydra.utils.instantiate(cfg.experiment)
    except InstantiationException as error:
        cause = error.__cause__
        raise BadConfig(str(cause) if isinstance(cause, ConfigError) else str(error)) from None


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = sweeps.SweepJob.current(hydra_cfg) if hydra_cfg.mode == RunMode.MULTIRUN else None
    experiment = build_experiment(cfg)
    try:
        ctx = build_context(cfg, output_dir, sweep.parallel_jobs if sweep else None,
                            weights_cache_dir(cfg.tracking))
        tracker = Tracker.from_config(cfg.tracking)
    except ConfigError as error:
        raise BadConfig(str(error)) from None

    overrides = list(hydra_cfg.overrides.task)
    tags = {**fingerprint(), "overrides": " ".join(overrides), "seed": cfg.seed,
            "device": str(ctx.device), "dtype": cfg.dtype, "threads": ctx.threads,
            **(sweep.tags if sweep else {})}
    name = f"#{sweep.job_num} {run_name(overrides)}" if sweep else run_name(overrides)
    parent = sweep.parent_run_id(experiment.name) if sweep else None
    with tracker.run(experiment.name, name, tags, parent) as run_id:
        try:
            tracker.log_params(run_id, flatten(OmegaConf.to_container(cfg, resolve=True)))
            OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
            tracker.log_artifact(run_id, output_dir / "config.yaml")
            tracker.log_artifacts(run_id, output_dir / ".hydra", ".hydra")
            log.info("%s: running %s", experiment.name, name)
            result = experiment.run(ctx)
            tracker.log_result(run_id, result, output_dir, dpi=cfg.plotting.dpi,
                               max_series_points=cfg.tracking.max_series_points,
                               figures=cfg.plotting.figures)
            log.info("%s: objective=%.6g checks=%s", experiment.name, result.objective,
                     describe_checks(result))
        finally:
            for log_file in output_dir.glob("*.log"):
                tracker.log_artifact(run_id, log_file)
        if result.failed_checks:
            raise ChecksFailed(f"{experiment.name}: checks failed: {describe_checks(result)}")
    return result.objective


def describe_checks(result: Result) -> str:
    """`passed`, or the failed checks with their errors and tolerances."""
    failed = [f"{name} (error {result.checks[name].error:.3g} > "
              f"{result.checks[name].tolerance:.3g})" for name in result.failed_checks]
    return ", ".join(failed) if failed else "passed"


if __name__ == "__main__":
    main()
