"""Section 8: every run in the store, summarised as one HTML page and its Markdown twin.

The notebook's summary printed numbers from memory (and crashed before that). This one reads
the MLflow store, so it covers every run ever made: per demonstration its runs, statuses and
checks, the latest run's key metrics and main figure, each selected sweep's comparison figure
and best job. `gradkit report [tracking overrides] [experiments=[...]] [sweeps=...]
[since=DATE]` writes it to `outputs/report/` and logs it to a run of MLflow experiment `summary`.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from hydra.utils import get_class
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from omegaconf import DictConfig

from gradkit.cli.catalog import experiments as catalogue
from gradkit.cli.commands import compose_config, fail, plain, split_config_dirs
from gradkit.core.components import KEYS as COMPONENTS
from gradkit.core.components import OWN
from gradkit.core.names import file_name
from gradkit.core.reproducibility import fingerprint
from gradkit.core.validation import ConfigError, choice
from gradkit.plotting import figure, save
from gradkit.tracking.store import PARENT_TAG, RunRecord, Tracker

REPORT_EXPERIMENT = "summary"
NOT_DEMONSTRATIONS = (REPORT_EXPERIMENT, "Default")
SWEEP_CHOICES = ("latest", "all", "none")
MAX_METRICS = 16  # key metrics shown for a latest run; MLflow has the rest
FIGURE_SEARCH = 20  # runs looked at, newest first, for one that logged figures
STATUS_COLOURS = {"FINISHED": "tab:green", "FAILED": "tab:red", "KILLED": "tab:orange"}


@dataclass(frozen=True)
class Options:
    """What the report covers and where it goes."""

    experiments: list[str] | None
    sweeps: str | list[str]
    since: datetime | None
    output: Path
    config_dirs: list[str] = field(default_factory=list)  # the user's own configs


def read_options(cfg: DictConfig, base: Path) -> Options:
    """The report's keys, each checked; a bad one raises a ConfigError naming it."""
    experiments = plain(cfg.experiments)
    if experiments is not None and (not isinstance(experiments, list) or not experiments
                                    or not all(isinstance(e, str) for e in experiments)):
        raise ConfigError(f"experiments={experiments!r} must be a list of demonstration names, "
                          "e.g. [gradient_descent,jacobian]")
    sweeps = plain(cfg.sweeps)
    if isinstance(sweeps, str):
        sweeps = choice("sweeps", sweeps, SWEEP_CHOICES)
    elif isinstance(sweeps, list) and sweeps:
        sweeps = [str(s) for s in sweeps]
    else:
        raise ConfigError(f"sweeps={sweeps!r}: use latest, all, none or a list of "
                          "sweep ids or parent run ids")
    since = None
    if cfg.since is not None:
        try:
            since = datetime.fromisoformat(str(cfg.since))
        except ValueError:
            raise ConfigError(f"since={cfg.since!r} is not a date; use YYYY-MM-DD or "
                              "YYYY-MM-DDTHH:MM") from None
    return Options(experiments, sweeps, since, base / str(cfg.output))


@dataclass
class Sweep:
    """A multirun's parent run and its jobs' runs."""

    parent: RunRecord
    children: list[RunRecord]

    @property
    def best(self) -> RunRecord | None:
        """The finished job with the lowest objective (what sweepers minimise)."""
        done = [run for run in self.children if run.status == "FINISHED"
                and math.isfinite(run.metrics.get("objective", math.nan))]
        return min(done, key=lambda run: run.metrics["objective"], default=None)


@dataclass
class Demonstration:
    """One MLflow experiment's runs (newest first, sweep parents apart) and selected sweeps."""

    name: str
    section: str = ""
    proves: str = ""
    runs: list[RunRecord] = field(default_factory=list)
    sweeps: list[Sweep] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(run.status == status for run in self.runs)

    def checks(self, verdict: str) -> list[RunRecord]:
        """Runs whose `checks` tag is `verdict` (passed or failed)."""
        return [run for run in self.runs if run.tags.get("checks") == verdict]

    @property
    def failed_checks(self) -> list[RunRecord]:
        return self.checks("failed")

    @property
    def latest(self) -> RunRecord | None:
        return self.runs[0] if self.runs else None


def describe(demo: Demonstration, target: str, section: str) -> None:
    """Fill in the notebook section (as `gradkit list` reads it) and what the checks prove."""
    try:
        cls = get_class(target)
    except Exception:  # a run of an experiment this installation no longer has
        return
    demo.section = section
    demo.proves = getattr(cls, "proves", "")


def collect(tracker: Tracker, options: Options) -> list[Demonstration]:
    """The demonstrations the options select, with their runs and sweeps from the store."""
    in_store = {name: eid for name, eid in tracker.experiments().items()
                if name not in NOT_DEMONSTRATIONS}
    entries = {entry.name: entry for entry in catalogue(options.config_dirs)}
    known = {name: entry.target for name, entry in entries.items()}
    names = sorted(set(known) | set(in_store))
    for name in options.experiments or []:
        if name not in names:
            raise ConfigError(f"experiments: {name!r} matches no demonstration; known: "
                              f"{', '.join(names)}")
    since = (f"attributes.start_time >= {int(options.since.timestamp() * 1000)}"
             if options.since else "")
    demos = []
    for name in options.experiments or names:
        runs = (tracker.search_runs([in_store[name]], since, ["attributes.start_time DESC"])
                if name in in_store else [])
        if not runs and name not in known:
            continue  # an empty experiment of the store (MLflow's Default) is no demonstration
        demo = Demonstration(name, runs=[run for run in runs if not is_parent(run)])
        describe(demo, known.get(name) or (demo.latest.params.get("experiment._target_", "")
                                           if demo.latest else ""),
                 entries[name].section if name in entries else "")
        demo.sweeps = [Sweep(parent, [run for run in runs
                                      if run.tags.get(PARENT_TAG) == parent.id])
                       for parent in select_sweeps([r for r in runs if is_parent(r)],
                                                   options.sweeps)]
        demos.append(demo)
    if isinstance(options.sweeps, list):
        found = {key for demo in demos for sweep in demo.sweeps
                 for key in (sweep.parent.id, sweep.parent.tags.get("sweep_id"))}
        for wanted in options.sweeps:
            if wanted not in found:
                raise ConfigError(f"sweeps: {wanted!r} matches no sweep of the selected "
                                  "demonstrations; give a sweep_id tag or a parent run id")
    return sorted(demos, key=lambda d: (not d.failed_checks, section_key(d.section), d.name))


def is_parent(run: RunRecord) -> bool:
    return "sweep_dir" in run.tags and PARENT_TAG not in run.tags


def select_sweeps(parents: list[RunRecord], sweeps: str | list[str]) -> list[RunRecord]:
    """Parents (newest first) chosen by `latest`, `all`, `none` or a list of ids."""
    if sweeps == "latest":
        return parents[:1]
    if sweeps == "all":
        return parents
    if sweeps == "none":
        return []
    return [p for p in parents if {p.id, p.tags.get("sweep_id")} & set(sweeps)]


def section_key(section: str) -> tuple[int, ...]:
    """"4.2" -> (4, 2); demonstrations without a section go last."""
    parts = section.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else (999,)


# --- the page ------------------------------------------------------------------------------

@dataclass
class Page:
    """A document as blocks, rendered as HTML (figures embedded) and as Markdown."""

    blocks: list[tuple] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("heading", level, text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", headers, rows))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(("figure", path, caption))

    @property
    def figures(self) -> list[Path]:
        return [block[1] for block in self.blocks if block[0] == "figure"]

    def html(self) -> str:
        parts = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>gradkit summary"
                 f"</title><style>{CSS}</style></head><body>"]
        for kind, *rest in self.blocks:
            if kind == "heading":
                parts.append(f"<h{rest[0]}>{html.escape(rest[1])}</h{rest[0]}>")
            elif kind == "paragraph":
                parts.append(f"<p>{html.escape(rest[0])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in rest[0])
                body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row)
                               + "</tr>" for row in rest[1])
                parts.append(f"<table><tr>{head}</tr>{body}</table>")
            else:
                data = base64.b64encode(rest[0].read_bytes()).decode()
                parts.append(f"<figure><img src='data:image/png;base64,{data}' "
                             f"alt='{html.escape(rest[1])}'><figcaption>{html.escape(rest[1])}"
                             "</figcaption></figure>")
        return "\n".join([*parts, "</body></html>\n"])

    def markdown(self, folder: Path) -> str:
        parts = []
        for kind, *rest in self.blocks:
            if kind == "heading":
                parts.append(f"{'#' * rest[0]} {md(rest[1])}")
            elif kind == "paragraph":
                parts.append(md(rest[0]))
            elif kind == "table":
                cells = [[md(c).replace("|", "\\|").replace("\n", " ") for c in row]
                         for row in [rest[0], *rest[1]]]
                lines = ["| " + " | ".join(row) + " |" for row in cells]
                lines.insert(1, "|" + "---|" * len(rest[0]))
                parts.append("\n".join(lines))
            else:
                parts.append(f"![{md(rest[1])}]({rest[0].relative_to(folder).as_posix()})")
        return "\n\n".join(parts) + "\n"


CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px;"
       "text-align:left;vertical-align:top}th{background:#f0f0f0}img{max-width:100%}"
       "figcaption{color:#555;font-size:90%}h2{border-bottom:1px solid #ccc;margin-top:2em}")


def when(run: RunRecord) -> str:
    return datetime.fromtimestamp(run.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def number(value: float) -> str:
    return f"{value:.6g}"


def runs_on(run: RunRecord) -> str:
    """`, on model=cnn, data=digits` for the components a run chose (nothing for its own)."""
    chosen = [f"{key}={run.tags[key]}" for key in COMPONENTS
              if run.tags.get(key, OWN) != OWN]
    return f", on {', '.join(chosen)}" if chosen else ""


def outcome(run: RunRecord) -> str:
    """e.g. `FINISHED (diverged), checks passed`."""
    status = run.tags.get("status")
    checks = run.tags.get("checks", "not run")
    return f"{run.status}{f' ({status})' if status else ''}, checks {checks}"


def build(tracker: Tracker, demos: list[Demonstration], options: Options,
          figures: Path) -> Page:
    """The summary page; figures it shows are written into `figures`."""
    page = Page()
    page.heading(1, "gradkit summary")
    scope = [f"store {tracker.uri}", f"made {datetime.now():%Y-%m-%d %H:%M:%S}"]
    if options.since:
        scope.append(f"runs since {options.since:%Y-%m-%d %H:%M}")
    page.paragraph("; ".join(scope) + ".")
    total = sum(len(demo.runs) for demo in demos)
    if not total:
        page.paragraph("The store holds no runs of these demonstrations yet: make some with "
                       "`make run` or `gradkit run experiment=NAME`.")
    page.table(["demonstration", "notebook section", "what its checks prove", "runs",
                "FINISHED", "FAILED", "checks passed / failed", "latest run"],
               [[d.name, d.section or "-", d.proves or "-", str(len(d.runs)),
                 str(d.count("FINISHED")), str(d.count("FAILED")),
                 f"{len(d.checks('passed'))} / {len(d.failed_checks)}",
                 f"{outcome(d.latest)}, {when(d.latest)}" if d.latest else "no runs"]
                for d in demos])
    failing = [(demo, run) for demo in demos for run in demo.failed_checks]
    if failing:
        page.heading(2, f"Failed checks ({plural(len(failing), 'run')})")
        page.table(["demonstration", "run", "run id", "started", "error"],
                   [[demo.name, run.name, run.id, when(run),
                     run.tags.get("error", "")] for demo, run in failing])
    if total:
        page.figure(save(overview_figure(demos), figures / "overview.png"),
                    "Runs per demonstration by status")
    for demo in demos:
        add_demonstration(page, tracker, demo, figures)
    return page


def add_demonstration(page: Page, tracker: Tracker, demo: Demonstration, folder: Path) -> None:
    page.heading(2, demo.name + (f" (notebook {demo.section})" if demo.section else ""))
    if demo.proves:
        page.paragraph(f"Its checks prove that {demo.proves}.")
    other = len(demo.runs) - demo.count("FINISHED") - demo.count("FAILED")
    page.paragraph(f"{plural(len(demo.runs), 'run')}: {demo.count('FINISHED')} FINISHED, "
                   f"{demo.count('FAILED')} FAILED, {other} other (killed or running); checks "
                   f"passed in {len(demo.checks('passed'))}, failed in {len(demo.failed_checks)}"
                   ", not run in the others.")
    latest = demo.latest
    if latest is not None:
        page.heading(3, f"Latest run: {latest.name}")
        page.paragraph(f"Run {latest.id}, started {when(latest)}{runs_on(latest)}: "
                       f"{outcome(latest)}.")
        metrics = latest.metrics
        key = sorted(name for name in metrics if not name.startswith("check."))
        checks = sorted(name for name in metrics if name.startswith("check."))
        rows = [[name, number(metrics[name])] for name in key[:MAX_METRICS] + checks]
        if len(key) > MAX_METRICS:
            rows.append([f"... {len(key) - MAX_METRICS} more in MLflow", ""])
        page.table(["metric", "value"], rows)
        with_figures = next((run for run in demo.runs[:FIGURE_SEARCH]
                             if tracker.artifact_files(run.id, "figures")), latest)
        caption = (f"{demo.name}: main figure of the latest run" if with_figures is latest else
                   f"{demo.name}: main figure of {with_figures.name} "
                   f"({with_figures.id}), the latest run that made figures")
        copy_figure(page, tracker, with_figures.id, "figures",
                    folder / f"{file_name(demo.name)}.png", caption)
    for sweep in demo.sweeps:
        add_sweep(page, tracker, demo, sweep, folder)


def add_sweep(page: Page, tracker: Tracker, demo: Demonstration, sweep: Sweep,
              folder: Path) -> None:
    parent = sweep.parent
    failed = sum(run.status != "FINISHED" for run in sweep.children)
    page.heading(3, f"Sweep: {parent.name}")
    page.paragraph(f"Sweep {parent.tags.get('sweep_id', '?')}, parent run "
                   f"{parent.id}: {parent.status}, {len(sweep.children)} job runs, "
                   f"{failed} not finished.")
    best = sweep.best
    if best is not None:
        page.paragraph(f"Best job by objective (lowest): {best.name}, objective "
                       f"{number(best.metrics['objective'])}, run {best.id}.")
    copy_figure(page, tracker, parent.id, "report",
                folder / f"{file_name(demo.name)}-sweep-{file_name(parent.id)}.png",
                f"{demo.name}: comparison of the jobs of sweep {parent.name}")


def md(text: str) -> str:
    """Text from the store, inert in Markdown: its HTML is shown, not run."""
    return html.escape(text, quote=False)


def copy_figure(page: Page, tracker: Tracker, run_id: str, artifacts: str, target: Path,
                caption: str) -> None:
    """The first PNG in a run's artifact folder, copied to `target` and shown."""
    pngs = [path for path in tracker.artifact_files(run_id, artifacts) if path.endswith(".png")]
    if not pngs:
        page.paragraph("(no figure logged)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        found = tracker.download(run_id, pngs[0], Path(tmp))
        if found is None:
            page.paragraph(f"(figure {pngs[0]} could not be downloaded)")
            return
        shutil.copyfile(found, target)
    page.figure(target, caption)


def overview_figure(demos: list[Demonstration]) -> Figure:
    """Runs per demonstration as bars stacked by status, failed checks noted."""
    shown = [demo for demo in demos if demo.runs][::-1]
    fig, ax = figure("Runs per demonstration by status", size=(9, 1.8 + 0.45 * len(shown)))
    names = [demo.name for demo in shown]
    left = [0] * len(shown)
    order = list(STATUS_COLOURS)
    statuses = sorted({run.status for demo in shown for run in demo.runs},
                      key=lambda s: (order.index(s) if s in order else len(order), s))
    for status in statuses:
        counts = [demo.count(status) for demo in shown]
        ax.barh(names, counts, left=left, label=status,
                color=STATUS_COLOURS.get(status, "tab:gray"))
        left = [a + b for a, b in zip(left, counts, strict=True)]
    for y, (demo, width) in enumerate(zip(shown, left, strict=True)):
        note = f" {plural(width, 'run')}" + (f", {len(demo.failed_checks)} with failed checks"
                                            if demo.failed_checks else "")
        ax.text(width, y, note, va="center", fontsize=9)
    ax.set_xlim(0, max(left) * 1.35)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="runs", ylabel="demonstration")
    ax.legend(title="status", loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return fig


# --- the command ---------------------------------------------------------------------------

def write_report(tracker: Tracker, demos: list[Demonstration], options: Options) -> str:
    """Write report.html, report.md and figures/ and log them to a `summary` run; its id."""
    output = options.output
    figures = output / "figures"
    try:
        figures.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"output={output}: the report cannot be written there "
                          f"({error.strerror}); choose a writable folder") from None
    page = build(tracker, demos, options, figures)
    (output / "report.html").write_text(page.html())
    (output / "report.md").write_text(page.markdown(output))
    runs = [run for demo in demos for run in demo.runs]
    tags = {**fingerprint(Path.cwd()), "demonstrations": " ".join(d.name for d in demos),
            "since": str(options.since or ""), "sweeps": str(options.sweeps)}
    with tracker.run(REPORT_EXPERIMENT, f"summary {datetime.now():%Y-%m-%d %H:%M:%S}",
                     tags) as run_id:
        tracker.log_metrics(run_id, {
            "demonstrations": len(demos), "runs": len(runs),
            "runs_failed": sum(run.status == "FAILED" for run in runs),
            "checks_failed": sum(len(demo.failed_checks) for demo in demos)})
        tracker.log_artifact(run_id, output / "report.html")
        tracker.log_artifact(run_id, output / "report.md")
        for path in page.figures:  # not older files the folder may hold
            tracker.log_artifact(run_id, path, "figures")
    return run_id


def main(argv: list[str] | None = None) -> None:
    """`gradkit report [--config-dir DIR] [KEY=VALUE ...]`: one line on success, one on bad
    input."""
    try:
        config_dirs, overrides = split_config_dirs(sys.argv[1:] if argv is None else argv)
        cfg = compose_config("report", overrides, config_dirs)
        options = dataclasses.replace(read_options(cfg, Path.cwd()), config_dirs=config_dirs)
        tracker = Tracker.from_config(cfg.tracking, base=Path.cwd())
        demos = collect(tracker, options)
        run_id = write_report(tracker, demos, options)
    except ConfigError as error:
        fail(str(error))
    runs = sum(len(demo.runs) for demo in demos)
    print(f"gradkit: summary of {plural(runs, 'run')} of {plural(len(demos), 'demonstration')}: "
          f"{options.output / 'report.html'}, {options.output / 'report.md'} "
          f"(MLflow experiment {REPORT_EXPERIMENT}, run {run_id})")
