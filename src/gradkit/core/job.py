"""One job: check every key, seed, instantiate the experiment, run it, track it in MLflow."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gradkit.core import interrupts
from gradkit.core.components import Components, locate
from gradkit.core.errors import UNEXPECTED, not_a_parameter
from gradkit.core.experiment import Experiment, Result, headline_first
from gradkit.core.parameters import builtin_experiments
from gradkit.core.reproducibility import fingerprint
from gradkit.core.settings import build_context, read_settings
from gradkit.core.validation import ConfigError
from gradkit.lib import timing
from gradkit.sweeps import callback as sweeps
from gradkit.sweeps import closing
from gradkit.tracking.store import (
    TARGET_TAG,
    StoreError,
    Tracker,
    experiment_tags,
    logged_params,
    run_name,
    write_result,
)

log = logging.getLogger("gradkit")


class BadConfig(CompactHydraException):
    """A config value that cannot be used (printed as one line, no traceback)."""


class StoreFailed(CompactHydraException):
    """The MLflow store failed during the run (printed as one line)."""


class ChecksFailed(CompactHydraException):
    """A demonstration's identity did not hold: a bug, so the job fails."""


def build_experiment(cfg: DictConfig, name: str) -> Experiment:
    """The experiment `cfg.experiment` describes; its constructor checks every parameter."""
    try:  # a class that cannot be imported, named in one line (Hydra's says less)
        locate("experiment._target_", cfg.experiment.get("_target_"))
    except ConfigError as error:
        raise BadConfig(str(error)) from None
    try:
        return hydra.utils.instantiate(cfg.experiment)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, ConfigError):
            raise BadConfig(str(cause)) from None
        unexpected = UNEXPECTED.search(str(cause))
        if unexpected:  # +experiment.<key>=... for a key the experiment does not have
            known = [key for key in cfg.experiment if key not in ("_target_", unexpected[1])]
            raise BadConfig(not_a_parameter(f"experiment.{unexpected[1]}", name, known)) from None
        raise BadConfig(str(error)) from None


def run(cfg: DictConfig) -> float:
    """One job: every key checked before any work, then one MLflow run.

    In a sweep that runs its jobs in this process, the run is closed after the next job has
    computed (`gradkit.sweeps.closing`): its figures are drawn meanwhile, on another core.
    """
    interrupts.install()  # a parallel launcher's worker process handles signals too
    job = _job(cfg)
    try:
        objective, label = next(job)
        if sweeps.runs_here():
            closing.defer(job, label)
        else:
            closing.close(job)
    finally:
        closing.close_open(but=job)  # earlier jobs: their figures were drawn meanwhile
    return objective


def _job(cfg: DictConfig) -> closing.Job:
    """The job, up to its logged result: yields its objective and its run's name; resumed,
    it logs its files once the PNGs are written and ends its run."""
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = sweeps.SweepJob.current(hydra_cfg) if hydra_cfg.mode == RunMode.MULTIRUN else None
    option = hydra_cfg.runtime.choices.experiment  # its MLflow experiment, a variant's own
    experiment = build_experiment(cfg, option)
    try:
        settings = read_settings(cfg)
        tracker = Tracker.from_config(cfg.tracking, base=Path(hydra_cfg.runtime.cwd))
        components = Components.from_config(cfg, hydra_cfg.runtime.choices)
        refuse_unused(components, experiment, option)
        ctx = build_context(settings, output_dir, sweep.parallel_jobs if sweep else None,
                            tracker.cache_dir, components)
        experiment.prepare(ctx)
    except ConfigError as error:
        raise BadConfig(str(error)) from None

    overrides = list(hydra_cfg.overrides.task)
    tags = {**fingerprint(Path(hydra_cfg.runtime.cwd)), "overrides": " ".join(overrides),
            "seed": settings.seed, "device": str(ctx.device), "dtype": settings.dtype,
            "threads": ctx.threads, TARGET_TAG: cfg.experiment._target_, **components.names,
            **(sweep.tags if sweep else {})}
    name = f"#{sweep.job_num} {run_name(overrides)}" if sweep else run_name(overrides)
    parent = sweep.parent_run_id(option) if sweep else None
    params = logged_params(OmegaConf.to_container(cfg, resolve=True))
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    try:
        with tracker.run(option, name, tags, parent, experiment_tags(type(experiment))) \
                as run_id:
            result = pngs = None
            try:
                try:
                    log.info("%s: running %s", option, name)
                    started = timing.now(ctx.device)
                    result = experiment.run(ctx)
                    result.metrics["job_seconds"] = timing.now(ctx.device) - started
                    result.metrics = headline_first(result.metrics, experiment.headline)
                    pngs = write_result(result, output_dir, dpi=settings.dpi,
                                        figures=settings.figures)
                    log.info("%s: objective=%.6g checks=%s%s", option, result.objective,
                             describe_checks(result), describe_headline(result, experiment))
                except BaseException:  # a failed or interrupted job keeps its params, config
                    with tracker.unless_failing():  # and log, if the store lets it
                        tracker.log_result(run_id, params, result, settings.max_series_points,
                                           experiment.log_scale)
                    raise
                tracker.log_result(run_id, params, result, settings.max_series_points,
                                   experiment.log_scale)
                if result.failed_checks:
                    raise ChecksFailed(f"{option}: checks failed: "
                                       f"{describe_checks(result)}; run {run_id}")
                log.info(tracker.describe(run_id, option))
                tracker.done(run_id)
                yield result.objective, f"run {run_id} ({option} {name})"
            except BaseException:  # and always its folder, once its PNGs are written
                with tracker.unless_failing():
                    tracker.log_files(run_id, output_dir, pngs)
                raise
            tracker.log_files(run_id, output_dir, pngs)  # the run is closed
    except StoreError as error:
        raise StoreFailed(str(error)) from None



def refuse_unused(components: Components, experiment: Experiment, option: str) -> None:
    """A model, data or loss chosen for an experiment that runs on none: a ConfigError
    naming the experiments that do."""
    chosen = [f"{key}={choice.name}" for key, choice in components.chosen.items()]
    if chosen and not experiment.takes_components():
        takers = [name for name, cls in builtin_experiments().items() if cls.takes_components()]
        raise ConfigError(f"{option} runs on no model, data or loss ({', '.join(chosen)} "
                          f"chosen); the experiments that do: {', '.join(takers)}")


def describe_headline(result: Result, experiment: Experiment) -> str:
    """`; final_loss=0.0021 iterations=2000`: the experiment's headline metrics of the run."""
    shown = [f"{name}={result.metrics[name]:.6g}" for name in experiment.headline
             if name in result.metrics]
    return f"; {' '.join(shown)}" if shown else ""


def describe_checks(result: Result) -> str:
    """`passed`, or the failed checks with their errors and tolerances."""
    failed = [f"{name} (error {result.checks[name].error:.3g} > "
              f"{result.checks[name].tolerance:.3g})" for name in result.failed_checks]
    return ", ".join(failed) if failed else "passed"
