"""Everything MLflow: the store, runs, params, metrics, series and artifacts."""

from __future__ import annotations

import csv
import fcntl
import functools
import getpass
import json
import logging
import math
import os
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gradkit.core import interrupts
from gradkit.core.experiment import Result
from gradkit.core.names import file_name, sqlite_uri
from gradkit.core.validation import ConfigError, choice
from gradkit.plotting import discard
from gradkit.plotting.pngs import PNGs
from gradkit.tracking import unclosed

PARAMS_PER_CALL = 100  # MLflow's limits on one log_batch: params, tags (each)
ENTRIES_PER_CALL = 1000  # and params, tags and metrics together
MAX_TAG_LENGTH = 5000
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param's value
PARENT_TAG = "mlflow.parentRunId"
USER_TAG = "mlflow.user"
SOURCE_TAGS = {"mlflow.source.name": "gradkit run", "mlflow.source.type": "LOCAL"}
SOURCE_COMMIT_TAG = "mlflow.source.git.commit"
# MLflow 3's UI starts on its GenAI view; this switches it to model training (and stays so).
UI_TRAINING_VIEW = "?workflowType=machine_learning"
UI_ADDRESS = "http://127.0.0.1:5000"  # where `gradkit ui` serves by default
DEFAULT_ROOT = "mlruns"  # the local store's folder, under the directory the command runs in
SEARCH_PAGE = 1000  # runs per search request; a store may hold many thousands
SERVER_TIMEOUT = 3.0  # seconds to wait for a tracking server to answer before any work
# MLflow retries an unreachable server for ~4 minutes by default; a sweep should fail fast.
for _key, _value in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                     "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # gradkit says where
                     "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():  # no bars in logs
    os.environ.setdefault(_key, _value)
# MLflow logs every SQL error with its traceback before raising it, urllib3 every retry of a
# server that does not answer; gradkit says what failed in one line.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
log = logging.getLogger("gradkit")


@dataclass(frozen=True)
class RunRecord:
    """A run as gradkit reads it back from a store: what the report, reproduce and the sweep
    report use, whatever the store's own entities are."""

    id: str
    name: str
    experiment_id: str
    status: str  # RUNNING | FINISHED | FAILED | KILLED
    start_time: int  # milliseconds since the epoch
    end_time: int | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @classmethod
    def of(cls, run: Run) -> RunRecord:
        return cls(run.info.run_id, run.info.run_name, run.info.experiment_id, run.info.status,
                   run.info.start_time, run.info.end_time, dict(run.data.params),
                   dict(run.data.metrics), dict(run.data.tags))


class StoreError(ConfigError):
    """The MLflow store cannot be opened; the message names it and what to do."""


MAX_SPREAD = 16  # numeric lists up to this long are also logged an element a key


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as dotted keys; leaves (lists included) as strings. A short list of
    numbers is also spread, an element a key (`start.0`, `start.1`), so that MLflow's compare
    views can plot each."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
            continue
        flat[name] = str(value)
        if isinstance(value, list) and 0 < len(value) <= MAX_SPREAD and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            flat.update({f"{name}.{i}": str(v) for i, v in enumerate(value)})
    return flat


INCIDENTAL = ("tracking.", "plotting.")  # config keys that change no result: in config.yaml only
WIDTHS = "hidden"  # a list of layer widths, also logged as its depth and largest width
TARGET_TAG = "experiment_target"  # the experiment's class, which reproduce replays


def is_incidental(key: str, value: str) -> bool:
    """Whether config key `key` is left out of a run's MLflow params: where it was stored,
    how it was plotted, the experiment's class (tag TARGET_TAG; its MLflow experiment says
    it) and the `_target_` of a model, data or loss left unchosen (`None`)."""
    return key.startswith(INCIDENTAL) or key == "experiment._target_" or (
        key.endswith("._target_") and value == "None")


def logged_params(config: Mapping[str, Any]) -> dict[str, str]:
    """A job's MLflow params: its flattened config without the incidental keys, and each
    list of widths (`hidden`) also as `<key>.depth` (its length) and `<key>.width` (its
    largest), so that MLflow's compare views can plot runs by them."""
    params = {key: value for key, value in flatten(config).items()
              if not is_incidental(key, value)}
    return params | _shapes(config)


def _shapes(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`<key>.depth` and `<key>.width` of every list of integer widths named WIDTHS."""
    shapes: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            shapes |= _shapes(value, f"{prefix}{key}.")
        elif key == WIDTHS and isinstance(value, list) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            shapes |= {f"{prefix}{key}.depth": str(len(value)),
                       f"{prefix}{key}.width": str(max(value, default=0))}
    return shapes


def log10_copies(names: tuple[str, ...], metrics: Mapping[str, float],
                 params: Mapping[str, str]) -> dict[str, float]:
    """`log10/<name>` of each of `names` that is a positive finite metric, or else a
    positive finite `experiment.<name>` param; nothing for a nonpositive or non-finite value
    (a diverged loss, a loss of exactly 0)."""
    copies = {}
    for name in names:
        try:
            value = float(metrics.get(name, params.get(f"experiment.{name}")))
        except (TypeError, ValueError):  # neither a metric nor a numeric param
            continue
        if math.isfinite(value) and value > 0:
            copies[f"log10/{name}"] = math.log10(value)
    return copies


def experiment_tags(cls: type) -> dict[str, str]:
    """The tags of the MLflow experiment of an experiment class: its purpose as the
    experiment's description (`mlflow.note.content`), its notebook `section` and what its
    checks `proves`, as `gradkit list` shows them."""
    from gradkit.cli.catalog import describe_module  # the docstring reader of `gradkit list`

    section, purpose = describe_module(cls.__module__)
    return {"mlflow.note.content": purpose, "section": section,
            "proves": getattr(cls, "proves", "")}


# globals that change results
NAMED_KEYS = ("seed=", "dtype=", "device=", "deterministic=", "split.",
              *(f"{key}{sign}" for key in ("model", "data", "loss") for sign in "=."))


def run_name(overrides: list[str]) -> str:
    """Name a run by the parameters its command line chose, e.g. `learning_rate=0.01 seed=3`.

    Keys that do not change the result (plotting, tracking, hydra, threads) are left out.
    """
    shown = [o.lstrip("+").removeprefix("experiment.") for o in overrides
             if o.lstrip("+").startswith(("experiment.", *NAMED_KEYS))]
    return " ".join(shown) or "defaults"


def _steps(length: int, max_points: int) -> list[int]:
    """`max_points` evenly spaced indices of range(length), ends included (all if 0)."""
    if not max_points or length <= max_points:
        return list(range(length))
    if max_points == 1:
        return [length - 1]
    return sorted({round(i * (length - 1) / (max_points - 1)) for i in range(max_points)})


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in this environment
        return "unknown"


class Tracker:
    """One MLflow store: a local SQLite database with artifacts beside it, or a server."""

    def __init__(self, uri: str, artifact_root: Path | None = None, base: Path | None = None):
        self.uri = uri
        self.artifact_root = artifact_root
        self.base = base or Path.cwd()  # the directory the command runs in
        self.client = MlflowClient(tracking_uri=uri)
        self._experiment_ids: dict[str, str] = {}
        self._done_at: dict[str, int] = {}  # run id -> when its job's work ended (ms)

    @classmethod
    def from_config(cls, tracking: Mapping[str, Any], base: Path | None = None,
                    existing: bool = False) -> Tracker:
        """The store a `tracking` config group names (kind: local | server), checked usable.

        A relative `root` (default `mlruns`) is taken relative to `base`, the directory the
        command started in. A local store is created on first use, unless `existing` (the
        commands that read runs): then a root without one is refused.
        """
        base = (base or Path.cwd()).resolve()
        if choice("tracking.kind", tracking["kind"], ("local", "server")) == "server":
            return _server(str(tracking["uri"]).rstrip("/"), base)
        root = Path(tracking.get("root") or DEFAULT_ROOT).expanduser()
        return _local((base / root).resolve(), base, existing)

    def experiment_id(self, name: str, tags: Mapping[str, str] | None = None) -> str:
        """The id of MLflow experiment `name`, created on first use (looked up once), with
        `tags` (those it lacks set on an experiment that exists)."""
        if name not in self._experiment_ids:
            self._experiment_ids[name] = self._find_or_create(name, tags or {})
        return self._experiment_ids[name]

    def _find_or_create(self, name: str, tags: Mapping[str, str]) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is None:
            location = (self.artifact_root / file_name(name)).as_uri() \
                if self.artifact_root else None
            try:
                return self.client.create_experiment(name, artifact_location=location,
                                                     tags=tags)
            except MlflowException as error:  # another process created it meanwhile, or
                found = self.client.get_experiment_by_name(name)  # the store is unwritable
                if found is None:
                    raise self.failed(error) from None
        for key, value in tags.items():  # a description edited in the UI stays
            if key not in found.tags:
                self.client.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id

    def start_run(self, experiment: str, name: str, tags: Mapping[str, str],
                  parent_run_id: str | None = None,
                  experiment_tags: Mapping[str, str] | None = None) -> str:
        """Create a RUNNING run and return its id; `experiment_tags` describe its MLflow
        experiment (`experiment_tags`)."""
        tags = {USER_TAG: _user(), **SOURCE_TAGS,
                **{key: str(value)[:MAX_TAG_LENGTH] for key, value in tags.items()}}
        if "git_commit" in tags:  # MLflow's UI shows it in its Version column
            tags[SOURCE_COMMIT_TAG] = tags["git_commit"]
        if parent_run_id:
            tags[PARENT_TAG] = parent_run_id
        try:
            run = self.client.create_run(self.experiment_id(experiment, experiment_tags),
                                         run_name=name, tags=tags)
        except MlflowException as error:
            raise self.failed(error) from None
        if unclosed.pending(self.uri):  # the store answers again: end what was left open
            for line in unclosed.end_left_open(self.uri, self._end_left_open):
                log.info("%s (left open by an earlier command)", line)
        return run.info.run_id

    @property
    def cache_dir(self) -> Path:
        """Where trained weights are cached: beside a local store; with a server, `mlruns/cache`
        under the directory the command runs in."""
        return (self.artifact_root.parent if self.artifact_root else self.base / DEFAULT_ROOT) \
            / "cache"

    def describe(self, run_id: str, experiment: str) -> str:
        """Where a run landed and how to open it in MLflow's UI, in one line."""
        where = f"run {run_id} in MLflow experiment {experiment}"
        url = self.run_url(run_id, self.experiment_id(experiment))
        if self.artifact_root is None:  # a server: link straight to the run
            return f"{where}: {url}"
        root = self.artifact_root.parent
        store = "" if root == self.base / DEFAULT_ROOT else f" --store {root}"
        return f"{where}, store {root}: `gradkit ui{store}`, then {url}"

    def run_url(self, run_id: str, experiment_id: str) -> str:
        """A run's page in MLflow's UI: on the server, or where `gradkit ui` serves a local
        store."""
        address = self.uri if self.artifact_root is None else UI_ADDRESS
        return f"{address}/#/experiments/{experiment_id}/runs/{run_id}{UI_TRAINING_VIEW}"

    def failed(self, error: BaseException) -> StoreError:
        """An MLflow error as one line naming the store."""
        return StoreError(f"the MLflow store at {self.uri} failed: {store_reason(error)}")

    def log_batch(self, run_id: str, params: Mapping[str, str] | None = None,
                  metrics: list[Metric] | None = None,
                  tags: Mapping[str, str] | None = None) -> None:
        """Params, metrics and tags in as few store calls as MLflow's batch limits allow
        (one for a typical job)."""
        params = [Param(key, value) for key, value in (params or {}).items()]
        tags = [RunTag(key, str(value)[:MAX_TAG_LENGTH]) for key, value in (tags or {}).items()]
        metrics = list(metrics or [])
        while True:
            batch_params, params = params[:PARAMS_PER_CALL], params[PARAMS_PER_CALL:]
            batch_tags, tags = tags[:PARAMS_PER_CALL], tags[PARAMS_PER_CALL:]
            room = ENTRIES_PER_CALL - len(batch_params) - len(batch_tags)
            batch_metrics, metrics = metrics[:room], metrics[room:]
            self.client.log_batch(run_id, metrics=batch_metrics, params=batch_params,
                                  tags=batch_tags)
            if not (params or tags or metrics):
                return

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        self.log_batch(run_id, metrics=metric_entries(metrics, step))

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.log_batch(run_id, tags=tags)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    @contextmanager
    def unless_failing(self) -> Iterator[None]:
        """The block's store failures suppressed: for what a failed or stopped job logs on
        its way out, so that its own error (an interruption stays one) is what is reported,
        not the store's."""
        with suppress(MlflowException, StoreError, OSError):
            yield

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str | None) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def done(self, run_id: str) -> None:
        """The run's job has done its work: its duration in MLflow ends now, however much
        later the run is closed (after the next job of a sweep has computed)."""
        self._done_at[run_id] = int(time.time() * 1000)

    def end(self, run_id: str, status: str, name: str = "") -> None:
        """End the run `status`; if the store cannot be written, the run is remembered
        (`gradkit.tracking.unclosed`) for a later command to end, and the error raised."""
        try:
            self.client.set_terminated(run_id, status, end_time=self._done_at.pop(run_id, None))
        except MlflowException:
            unclosed.remember(self.uri, run_id, name, status)
            raise

    def _end_left_open(self, run_id: str, status: str) -> None:
        """End a run an earlier command could not, unless something else has since."""
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, status)
            self.set_tags(run_id, {"error": "left open: its store stopped answering when its "
                                            "command ended"})

    @contextmanager
    def run(self, experiment: str, name: str, tags: Mapping[str, str],
            parent_run_id: str | None = None,
            experiment_tags: Mapping[str, str] | None = None) -> Iterator[str]:
        """A run that ends FINISHED, FAILED (with an `error` tag) if the body raises, or KILLED
        if it is interrupted. A failing store becomes a StoreError."""
        run_id = self.start_run(experiment, name, tags, parent_run_id, experiment_tags)
        try:
            yield run_id
        except BaseException as error:
            status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
            ended = self._end_after(run_id, status, error, name)
            if isinstance(error, interrupts.Interrupted):
                if ended:  # if not, the command's last line names it (`unclosed`)
                    error.ended.append(f"run {run_id} ({name}) ended {status}")
                raise
            if not ended:
                raise StoreError(f"{store_reason(error)}; the store at {self.uri} could not be "
                                 "written either") from None
            if isinstance(error, MlflowException):
                raise self.failed(error) from None
            raise
        try:
            with interrupts.held():  # a signal now is taken once the run has ended
                self.end(run_id, "FINISHED", name)
        except MlflowException as error:
            raise self.failed(error) from None

    def _end_after(self, run_id: str, status: str, error: BaseException, name: str) -> bool:
        """End the run `status` with an `error` tag; False if the store cannot be written
        (full, read-only, unreachable: the store itself may be what failed)."""
        try:
            self.end(run_id, status, name)
        except MlflowException:
            return False
        with suppress(MlflowException):
            self.set_tags(run_id, {"error": f"{type(error).__name__}: {error}"})
        return True

    def log_result(self, run_id: str, params: Mapping[str, str], result: Result | None,
                   max_series_points: int = 0, log_scale: tuple[str, ...] = ()) -> None:
        """A job's params with its result's metrics (and the `log10_copies` of those and the
        params `log_scale` names), series and tags: one batch for a typical job."""
        metrics: list[Metric] = []
        tags: dict[str, str] = {}
        if result is not None:
            checks = {f"check/{name}/{part}": getattr(c, part)
                      for name, c in result.checks.items() for part in ("error", "tolerance")}
            metrics = [*metric_entries({**result.metrics, **checks,
                                        **log10_copies(log_scale, result.metrics, params),
                                        "objective": result.objective}),
                       *series_entries(result.series, max_series_points)]
            tags = {**result.tags, "checks": "failed" if result.failed_checks else "passed"}
        self.log_batch(run_id, params, metrics, tags)

    def log_files(self, run_id: str, output_dir: Path, pngs: PNGs | None) -> None:
        """The job's folder (config, Hydra's record, log, and what `write_result` wrote) as
        the run's artifacts, in one call, once its PNGs are written."""
        try:
            if pngs is not None:
                pngs.wait()
        finally:
            self.log_artifacts(run_id, output_dir, None)

    def experiments(self) -> dict[str, str]:
        """Every active MLflow experiment of the store, name -> id."""
        found, token = {}, None
        while True:
            page = self.client.search_experiments(max_results=SEARCH_PAGE, page_token=token)
            found |= {e.name: e.experiment_id for e in page}
            if not (token := page.token):
                return found

    def search_runs(self, experiment_ids: list[str], filter_string: str = "",
                    order_by: list[str] | None = None) -> list[RunRecord]:
        """Every matching run, a page at a time."""
        runs, token = [], None
        while True:
            page = self.client.search_runs(experiment_ids, filter_string,
                                           max_results=SEARCH_PAGE, order_by=order_by,
                                           page_token=token)
            runs.extend(map(RunRecord.of, page))
            if not (token := page.token):
                return runs

    def find_run(self, run_id: str) -> RunRecord | None:
        """The run `run_id`, or None when this store has no such run."""
        try:
            return RunRecord.of(self.client.get_run(run_id))
        except MlflowException:
            return None

    def download(self, run_id: str, path: str, folder: Path) -> Path | None:
        """Artifact `path` of a run, downloaded into `folder`; None when it has none."""
        folder.mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.client.download_artifacts(run_id, path, str(folder)))
        except (MlflowException, OSError):
            return None

    def artifact_files(self, run_id: str, folder: str) -> list[str]:
        """Paths of the files directly in artifact `folder` of a run."""
        return sorted(a.path for a in self.client.list_artifacts(run_id, folder) if not a.is_dir)

    def child_runs(self, experiment: str, parent_run_id: str) -> list[RunRecord]:
        """Every run whose parent is `parent_run_id`."""
        return self.search_runs([self.experiment_id(experiment)],
                                f"tags.`{PARENT_TAG}` = '{parent_run_id}'")


def metric_entries(values: Mapping[str, float], step: int = 0) -> list[Metric]:
    """Scalar metrics, all at `step`, stamped now."""
    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, step) for key, value in values.items()]


def series_entries(series: Mapping[str, list[float]], max_points: int = 0) -> list[Metric]:
    """Each series as a metric history of at most `max_points` steps (0: all).

    Longer series keep evenly spaced steps, first and last included, with their real step
    numbers; a SQLite store costs ~0.07 ms a point, so this bounds the cost of a run.
    """
    now = int(time.time() * 1000)
    return [Metric(key, float(values[step]), now, step)
            for key, values in series.items() for step in _steps(len(values), max_points)]


def write_result(result: Result, output_dir: Path, *, dpi: int = 100,
                 figures: bool = True) -> PNGs | None:
    """A Result's files in the job's folder: series.csv (every point), summary.json and
    figures/*.png (unless `figures` is false), these drawn by a child process: wait for them
    with the PNGs returned."""
    if result.series:
        _write_series(output_dir / "series.csv", result.series)
    summary = output_dir / "summary.json"
    summary.write_text(json.dumps(_summary(result), indent=2, default=str))
    if figures:
        return PNGs(result.figures, output_dir / "figures", dpi)
    for fig in result.figures.values():
        discard(fig)
    return None


def _write_series(path: Path, series: Mapping[str, list[float]]) -> Path:
    """Every point of every series, in long format: series,step,value."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["series", "step", "value"])
        for name, values in series.items():
            writer.writerows((name, step, repr(float(v))) for step, v in enumerate(values))
    return path


@functools.lru_cache(maxsize=8)
def _server(uri: str, base: Path) -> Tracker:
    """The tracking server at `uri`, checked once per process (a sweep's jobs share it)."""
    _check_server(uri)
    return Tracker(uri, base=base)


@functools.lru_cache(maxsize=8)
def _local(root: Path, base: Path, existing: bool) -> Tracker:
    """The embedded store in `root`, checked once per process (a sweep's jobs share it)."""
    database = _local_database(root, existing)
    try:
        with _no_stray_folder(database):
            tracker = Tracker(sqlite_uri(database), database.parent / "artifacts", base)
            tracker.client.search_experiments(max_results=1)
    except Exception as error:  # whatever MLflow or SQLite raise for a broken database
        raise _unusable(database, str(error).splitlines()[0]) from None
    return tracker


@contextmanager
def _no_stray_folder(database: Path) -> Iterator[None]:
    """MLflow makes a SQLite database's folder from its URI's text, unquoted: for a folder
    named with `?`, `%` or `#`, an empty folder beside it, removed here."""
    stray = Path(sqlite_uri(database).removeprefix("sqlite:///")).parent
    existed = stray == database.parent or stray.exists()
    try:
        yield
    finally:
        if not existed:
            with suppress(OSError):  # not empty: not the one MLflow made
                stray.rmdir()


def store_reason(error: BaseException) -> str:
    """What went wrong with the store, in a few words: a server that does not answer,
    SQLite's reason without SQLAlchemy's advice, or the first line of the message (MLflow's
    span many), its type when it has none."""
    text = str(error)
    if "Max retries exceeded" in text or "NewConnectionError" in text:
        return "the server does not answer" + (" (connection refused)" if "refused" in text
                                               else "")
    lines = text.strip().splitlines()
    sqlite = [line for line in lines if line.startswith("(sqlite3.")]
    return (sqlite or lines or [type(error).__name__])[0]


def _unusable(database: Path, reason: str) -> StoreError:
    return StoreError(f"tracking.root={database.parent}: {database} is not a usable MLflow store "
                      f"({reason}); move it away or set tracking.root to another folder")


def _local_database(root: Path, existing: bool) -> Path:
    """`root/mlflow.db`, created complete or not at all (unless `existing`: then refused
    where there is none), and refused if it is not MLflow's.

    The schema is built in a temporary file under an exclusive lock and renamed into place,
    so an interrupted creation or two commands starting at once never leave a broken store.
    """
    if root.exists() and not root.is_dir():
        raise StoreError(f"tracking.root={root} is a file; point it at a folder")
    database = root / "mlflow.db"
    made = database.exists() and database.stat().st_size > 0
    if existing and not made:
        raise StoreError(f"tracking.root={root} holds no MLflow store (no mlflow.db); run an "
                         "experiment first or pass the folder of the store that holds the runs")
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not made:
            _create_database(database)
    except OSError as error:
        raise StoreError(f"tracking.root={root}: cannot create the MLflow store there "
                         f"({error.strerror}); choose a writable folder") from None
    try:
        with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error as error:
        raise _unusable(database, str(error)) from None
    if "experiments" not in tables or any(t.startswith("_alembic_tmp") for t in tables):
        raise _unusable(database, "its MLflow tables are missing or half-built")
    if not (os.access(database, os.W_OK) and os.access(root, os.W_OK)):
        raise StoreError(f"tracking.root={root}: the MLflow store there is read-only (every "
                         "command writes runs to it); make it writable or choose another "
                         "folder")
    return database


def _create_database(database: Path) -> None:
    with (database.parent / "mlflow.db.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the holder exits, however it exits
        if database.exists() and database.stat().st_size > 0:
            return  # another process made it while this one waited
        for stale in database.parent.glob(".mlflow.db.*.tmp*"):  # left by an interrupted try
            stale.unlink()
        building = database.parent / f".mlflow.db.{os.getpid()}.tmp"
        try:
            # imported only here: runs on a server never load SQLAlchemy (~0.5 s)
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            with _no_stray_folder(building):
                store = SqlAlchemyStore(sqlite_uri(building), str(database.parent / "artifacts"))
            store.engine.dispose()
            os.replace(building, database)
        finally:
            building.unlink(missing_ok=True)


def _check_server(uri: str) -> None:
    """Fail with one line unless an HTTP server answers at `uri`."""
    if not uri.startswith(("http://", "https://")) or "//" not in uri or not uri.split("//")[1]:
        raise StoreError(f"tracking.uri={uri!r} is not a tracking server URL; use "
                         "http://HOST:PORT (e.g. http://127.0.0.1:5000)")
    try:
        urllib.request.urlopen(f"{uri}/health", timeout=SERVER_TIMEOUT).close()
    except urllib.error.HTTPError:
        return  # something answers: MLflow will say more if it is not a tracking server
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        reason = getattr(reason, "strerror", None) or str(reason)
        raise StoreError(f"no MLflow server at {uri}: {reason.lower()}; start one with "
                         "`make server` or fix tracking.uri") from None


def _summary(result: Result) -> dict[str, Any]:
    finite = {k: v if math.isfinite(v) else str(v) for k, v in result.metrics.items()}
    return {
        "objective": result.objective if math.isfinite(result.objective) else str(result.objective),
        "metrics": finite,
        "checks": {name: {"error": c.error, "tolerance": c.tolerance, "passed": c.passed}
                   for name, c in result.checks.items()},
        "tags": result.tags,
        **result.summary,
    }
