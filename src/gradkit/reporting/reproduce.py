"""`gradkit reproduce RUN_ID [--config-dir DIR] [tracking overrides]`: replay a run, diff the two.

The replay is built from what the run logged: its command-line overrides (`.hydra/overrides.yaml`)
and its resolved `config.yaml`. Every key whose value today's defaults would change is pinned
back to the logged value, so the replay runs exactly the logged config, as a single run in the
same MLflow experiment, tagged `reproduces=RUN_ID`. Exit 0 when every metric and check is
identical, 1 when any differs (named), 2 when the run cannot be reproduced.
"""

from __future__ import annotations

import math
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from gradkit.cli import run as entry_point
from gradkit.cli.commands import compose_config, fail, plain, split_config_dirs
from gradkit.core import configs
from gradkit.core.experiment import is_timing
from gradkit.core.interrupts import is_termination
from gradkit.core.validation import ConfigError
from gradkit.tracking.store import TARGET_TAG, RunRecord, Tracker, flatten

IDENTICAL, DIFFERS, UNREPRODUCIBLE = 0, 1, 2
ENVIRONMENT_TAGS = ("git_commit", "git_dirty", "python", "platform", "device")
USAGE = "usage: gradkit reproduce RUN_ID [--config-dir DIR] [tracking=server tracking.uri=URL | " \
        "tracking.root=DIR]"


class Unreproducible(Exception):
    """The run cannot be replayed; the message says why."""


def literal(value: Any) -> str:
    """`value` in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{literal(v)}" for k, v in value.items()) + "}"
    # Hydra reads backslashes literally, except those before a quote: double them, escape it
    escaped = re.sub(r"(\\*)('|$)", lambda m: 2 * m[1] + ("\\'" if m[2] else ""), str(value))
    return f"'{escaped}'"


def override_key(override: str) -> str:
    """The key an override sets (`+experiment.x=1` -> `experiment.x`)."""
    return override.split("=")[0].lstrip("+~")


def is_store_key(key: str) -> bool:
    return override_key(key).startswith("tracking")


TRUSTED_GROUPS = ("experiment", "model", "data", "loss")


def trusted_targets(config_dirs: Sequence[str] = ()) -> set[str]:
    """The classes a replay may instantiate: those of gradkit's and the user's options of
    the experiment, model, data and loss groups, never one that only a run's (editable)
    artifacts name."""
    return {str(configs.compose("config", [f"{group}={name}"], config_dirs)[group]
                .get("_target_", ""))
            for group in TRUSTED_GROUPS for name in configs.group_options(group, config_dirs)}


def untrusted(replay_config: Any, trusted: set[str], where: str = "") -> list[str]:
    """`key=target` for every `_target_` in `replay_config` that is not trusted."""
    if isinstance(replay_config, dict):
        return [found for key, value in replay_config.items()
                for found in ([f"{where}{key}={value}"] if key == "_target_" and value not in
                              {*trusted, None} else untrusted(value, trusted, f"{where}{key}."))]
    if isinstance(replay_config, list):
        return [found for i, item in enumerate(replay_config)
                for found in untrusted(item, trusted, f"{where}{i}.")]
    return []


def refuse_edited(overrides: list[str], config_dirs: Sequence[str]) -> None:
    """Raise Unreproducible if the replay would set Hydra's own keys or instantiate a class
    that is not an experiment of gradkit or of the user's config folders."""
    hydra_keys = [o for o in overrides if override_key(o).split(".")[0].split("/")[0] == "hydra"]
    if hydra_keys:
        raise Unreproducible(f"its logged config sets Hydra's own keys ({hydra_keys[0]}), "
                             "which gradkit never logs there; its artifacts were edited")
    try:
        composed = OmegaConf.to_container(compose_config("config", overrides, config_dirs))
    except ConfigError as error:
        raise Unreproducible(f"its logged config no longer composes: {error}") from None
    foreign = untrusted(composed, trusted_targets(config_dirs))
    if foreign:
        raise Unreproducible(f"its logged config names {foreign[0]}, which is not an option "
                             f"of gradkit or of your --config-dir ({', '.join(TRUSTED_GROUPS)}"
                             "); only those are replayed (a model, data or loss of your own: "
                             "put it in DIR/model/NAME.yaml and pass --config-dir DIR)")


def logged_config_dirs(tracker: Tracker, run_id: str) -> list[str]:
    """The user's config folders the run was composed with (`--config-dir`,
    `hydra.searchpath`), as its Hydra record names them."""
    with tempfile.TemporaryDirectory() as tmp:
        record = tracker.download(run_id, ".hydra/hydra.yaml", Path(tmp))
        sources = OmegaConf.select(OmegaConf.load(record), "hydra.runtime.config_sources",
                                   default=[]) if record else []
    return [source.path for source in sources
            if source.schema == "file" and source.provider not in ("hydra", "main", "schema")]


def replay_overrides(tracker: Tracker, run: RunRecord, store: list[str],
                     config_dirs: list[str] = ()) -> tuple[list[str], list[str]]:
    """The overrides that rerun `run` into the store `store` names, and warnings about keys.

    Starts from the run's own overrides (without its store), then pins every key whose
    composed value differs from the logged resolved config. Refuses (Unreproducible) a
    replay that would instantiate anything but an experiment of gradkit or of `config_dirs`.
    """
    run_id = run.id
    target = run.tags.get(TARGET_TAG) or run.params.get("experiment._target_")  # or older
    if not target:
        raise Unreproducible(f"run {run_id} was not made by gradkit (it has no "
                             f"{TARGET_TAG} tag)")
    with tempfile.TemporaryDirectory() as tmp:
        logged_path = tracker.download(run_id, "config.yaml", Path(tmp))
        if logged_path is None:
            raise Unreproducible(f"run {run_id} has no config.yaml artifact: its config is "
                                 "missing")
        logged = OmegaConf.load(logged_path)
        overrides_path = tracker.download(run_id, ".hydra/overrides.yaml", Path(tmp))
        overrides = (list(OmegaConf.load(overrides_path)) if overrides_path
                     else [f"experiment={target.split('.')[-2]}"])
    overrides = [o for o in overrides if not is_store_key(o)]
    try:
        composed = flatten(OmegaConf.to_container(
            compose_config("config", [*overrides, *store], config_dirs), resolve=True))
    except ConfigError as error:
        raise Unreproducible(f"its overrides no longer compose: {error}") from None
    wanted = {k: v for k, v in flatten(OmegaConf.to_container(logged)).items()
              if not k.startswith("tracking.")}
    pins, warnings = [], []
    for key, value in wanted.items():
        if composed.get(key) != value:
            prefix = "" if key in composed else "+"
            pins.append(f"{prefix}{key}={literal(plain(OmegaConf.select(logged, key)))}")
    for key in sorted(set(composed) - set(wanted)):
        if not key.startswith("tracking."):
            warnings.append(f"{key} did not exist when the run was made; it takes its default "
                            f"{composed[key]}")
    replay_with = [*overrides, *pins, *store]
    refuse_edited(replay_with, config_dirs)
    return replay_with, warnings


def replay(tracker: Tracker, run: RunRecord, overrides: list[str],
           config_dirs: list[str] = ()) -> RunRecord:
    """Run `gradkit run OVERRIDES` in this process; the run it made."""
    started = int(time.time() * 1000)
    argv = sys.argv
    sys.argv = ["gradkit run", *[f"--config-dir={d}" for d in config_dirs], *overrides,
                "hydra.mode=RUN"]
    try:
        entry_point.main()
    except SystemExit as exit_:  # a failing replay still made a run to compare, or says why not
        if is_termination(exit_.code):  # stopped by a signal: no verdict
            raise
    finally:
        sys.argv = argv
    task = " ".join(o for o in overrides if not o.startswith("hydra."))
    made = [r for r in tracker.search_runs([run.experiment_id],
                                           f"attributes.start_time >= {started}",
                                           ["attributes.start_time DESC"])
            if r.tags.get("overrides") == task]
    if not made:
        raise Unreproducible("the replay stopped before it made a run (see above)")
    return made[0]


@dataclass(frozen=True)
class Difference:
    name: str
    original: str
    replay: str
    same: bool
    timing: bool = False  # a wall-clock measurement: shown, never counted as a difference


def compare(original: RunRecord, replayed: RunRecord) -> list[Difference]:
    """Every metric of either run, then the run status and the checks verdict."""
    a, b = original.metrics, replayed.metrics
    rows = []
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name), b.get(name)
        same = x is not None and y is not None and (x == y or (math.isnan(x) and math.isnan(y)))
        rows.append(Difference(name, shown(x), shown(y), same, is_timing(name)))
    for name, x, y in (("run status", original.status, replayed.status),
                       ("checks", original.tags.get("checks", "-"),
                        replayed.tags.get("checks", "-"))):
        rows.append(Difference(name, x, y, x == y))
    return rows


def shown(value: float | None) -> str:
    return "missing" if value is None else repr(value)


def environment_warnings(original: RunRecord, replayed: RunRecord) -> list[str]:
    """Git commit, package versions, python, platform and device that changed since."""
    a, b = original.tags, replayed.tags
    keys = [*ENVIRONMENT_TAGS, *sorted(k for k in set(a) | set(b) if k.startswith("version."))]
    return [f"{key} differs: {a.get(key, 'missing')} then, {b.get(key, 'missing')} now"
            for key in keys if a.get(key) != b.get(key)]


def table(rows: list[Difference]) -> str:
    headers = ("", "metric", "original", "replay")
    marks = {(False, False): "!=", (False, True): "~"}
    cells = [headers, *[(marks.get((r.same, r.timing), ""), r.name, r.original, r.replay)
                        for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def reproduce(run_id: str, store: list[str], config_dirs: list[str] = ()) -> int:
    """Replay run `run_id` of the store `store` names, print the comparison; the exit code."""
    try:
        tracker = Tracker.from_config(compose_config("reproduce", store, config_dirs).tracking,
                                      base=Path.cwd(), existing=True)
    except ConfigError as error:
        fail(str(error), UNREPRODUCIBLE)
    original = tracker.find_run(run_id)
    if original is None:
        fail(f"no run {run_id!r} in the MLflow store at {tracker.uri}; pass the store that "
             "holds it (tracking.root=DIR or tracking=server tracking.uri=URL)", UNREPRODUCIBLE)
    if original.status == "KILLED":
        fail(f"run {run_id} ended KILLED: it has no result to compare; rerun its command with "
             "gradkit run instead", UNREPRODUCIBLE)
    config_dirs = config_dirs or logged_config_dirs(tracker, run_id)
    try:
        overrides, warnings = replay_overrides(tracker, original, store, config_dirs)
        replayed = replay(tracker, original, overrides, config_dirs)
    except Unreproducible as error:
        fail(f"run {run_id} cannot be reproduced: {error}", UNREPRODUCIBLE)
    tracker.set_tags(replayed.id, {"reproduces": run_id})
    for warning in [*warnings, *environment_warnings(original, replayed)]:
        print(f"gradkit: warning: {warning}", file=sys.stderr)
    rows = compare(original, replayed)
    print(f"run {run_id} ({original.name}) replayed as run {replayed.id}")
    print(table(rows))
    differing = [row.name for row in rows if not row.same and not row.timing]
    timings = sum(row.timing for row in rows)
    if differing:
        print(f"gradkit: {len(differing)} of {len(rows) - timings} values differ: "
              f"{', '.join(differing)}", file=sys.stderr)
        return DIFFERS
    aside = f" ({timings} wall-clock timings, marked ~ where they differ, not compared)" \
        if timings else ""
    print(f"gradkit: identical: all {len(rows) - 2 - timings} metrics, the run status and the "
          f"checks{aside}")
    return IDENTICAL


def main(argv: list[str] | None = None) -> None:
    config_dirs, args = split_config_dirs(sys.argv[1:] if argv is None else argv)
    run_ids = [arg for arg in args if "=" not in arg]
    if len(run_ids) != 1:
        fail(USAGE, UNREPRODUCIBLE)
    raise SystemExit(reproduce(run_ids[0], [arg for arg in args if "=" in arg], config_dirs))
