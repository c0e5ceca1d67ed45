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
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import jinja2
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from omegaconf import DictConfig

from gradkit.cli.catalog import experiments as catalogue
from gradkit.cli.commands import compose_config, fail, plain, split_config_dirs
from gradkit.core.components import KEYS as COMPONENTS
from gradkit.core.components import OWN, locate
from gradkit.core.names import file_name
from gradkit.core.reproducibility import fingerprint
from gradkit.core.validation import ConfigError, choice
from gradkit.plotting import figure, save
from gradkit.tracking.store import PARENT_TAG, TARGET_TAG, RunRecord, Tracker

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
    normal_ends: dict[str, str] = field(default_factory=dict)  # status tag -> what it means
    runs: list[RunRecord] = field(default_factory=list)
    sweeps: list[Sweep] = field(default_factory=list)
    latest_sweep: Sweep | None = None  # selected or not

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

    @property
    def latest_standalone(self) -> RunRecord | None:
        """The newest run that is no sweep's job."""
        return next((run for run in self.runs if PARENT_TAG not in run.tags), None)


def describe(demo: Demonstration, target: str, section: str) -> None:
    """Fill in the notebook section (as `gradkit list` reads it), what the checks prove and
    which status tags are normal ends."""
    if not target:  # a run made outside gradkit
        return
    try:
        cls = locate("experiment._target_", target)
    except ConfigError:  # a run of an experiment this installation no longer has
        return
    demo.section = section
    demo.proves = getattr(cls, "proves", "")
    demo.normal_ends = dict(getattr(cls, "normal_ends", ()))


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
        describe(demo, known.get(name) or (target_of(demo.latest) if demo.latest else ""),
                 entries[name].section if name in entries else "")
        jobs: dict[str, list[RunRecord]] = {}
        for run in runs:
            jobs.setdefault(run.tags.get(PARENT_TAG, ""), []).append(run)
        parents = [run for run in runs if is_parent(run)]
        demo.sweeps = [Sweep(parent, jobs.get(parent.id, []))
                       for parent in select_sweeps(parents, options.sweeps)]
        demo.latest_sweep = Sweep(parents[0], jobs.get(parents[0].id, [])) if parents else None
        demos.append(demo)
    if isinstance(options.sweeps, list):
        found = {key for demo in demos for sweep in demo.sweeps
                 for key in (sweep.parent.id, sweep.parent.tags.get("sweep_id"))}
        for wanted in options.sweeps:
            if wanted not in found:
                raise ConfigError(f"sweeps: {wanted!r} matches no sweep of the selected "
                                  "demonstrations; give a sweep_id tag or a parent run id")
    return sorted(demos, key=lambda d: (not d.failed_checks, section_key(d.section), d.name))


def target_of(run: RunRecord) -> str:
    """The experiment class a run ran: its tag, or the param of runs made before the tag."""
    return run.tags.get(TARGET_TAG) or run.params.get("experiment._target_", "")


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

@dataclass(frozen=True)
class Link:
    """Text that opens `url`."""

    text: str
    url: str


Span = str | Link
Cell = Span | list[Span]  # a cell or paragraph: text and links


def spans(cell: Cell) -> list[Span]:
    return cell if isinstance(cell, list) else [cell]


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    anchor: str  # its id in the HTML; GitHub's and MkDocs' in the Markdown
    kind: str = "heading"


@dataclass(frozen=True)
class Paragraph:
    spans: list[Span]
    kind: str = "paragraph"


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[list[Span]]]
    kind: str = "table"


@dataclass(frozen=True)
class Image:
    path: Path
    name: str  # relative to the page's folder
    caption: str
    kind: str = "figure"


@dataclass(frozen=True)
class Contents:
    """Links to headings: each top entry with the entries under it."""

    entries: list[tuple[Heading, list[Heading]]] = field(default_factory=list)
    kind: str = "contents"


def slug(text: str) -> str:
    """A heading's anchor as GitHub and MkDocs make it: lower case, punctuation dropped,
    spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", text.lower()).strip().replace(" ", "-") or "section"


@dataclass
class Page:
    """A document as blocks, rendered by one template per format from the same blocks."""

    folder: Path  # where it is written; its figures lie under it
    blocks: list[Heading | Paragraph | Table | Image | Contents] = field(default_factory=list)

    def heading(self, level: int, text: str) -> Heading:
        anchor = base = slug(text)
        used = {block.anchor for block in self.blocks if isinstance(block, Heading)}
        count = 0
        while anchor in used:  # GitHub's numbering of repeated headings
            count += 1
            anchor = f"{base}-{count}"
        heading = Heading(level, text, anchor)
        self.blocks.append(heading)
        return heading

    def paragraph(self, *text: Span) -> None:
        self.blocks.append(Paragraph(list(text)))

    def table(self, headers: list[str], rows: list[list[Cell]]) -> None:
        self.blocks.append(Table(headers, [[spans(cell) for cell in row] for row in rows]))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(Image(path, path.relative_to(self.folder).as_posix(), caption))

    def contents(self) -> Contents:
        """A table of contents here, filled in as sections are added."""
        block = Contents()
        self.blocks.append(block)
        return block

    @property
    def figures(self) -> list[Path]:
        return [block.path for block in self.blocks if isinstance(block, Image)]

    def render(self, form: str) -> str:
        """The page as `html` (values autoescaped, figures embedded) or `md`."""
        return TEMPLATES.get_template(f"report.{form}.j2").render(blocks=self.blocks, css=CSS)


def md(text: str) -> str:
    """Text from the store, inert in Markdown: its HTML is shown, not run."""
    return html.escape(str(text), quote=False)


def md_cell(text: str) -> str:
    """Text in a Markdown table cell: inert, on one line, its pipes no column breaks."""
    return md(text).replace("|", "\\|").replace("\n", " ")


def md_label(text: str) -> str:
    """A Markdown link's text: a cell's, its brackets no link syntax."""
    return md_cell(text).replace("[", "\\[").replace("]", "\\]")


def embedded(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("gradkit.reporting", "templates"),
    autoescape=jinja2.select_autoescape(["html.j2"], default_for_string=False),
    trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined)
TEMPLATES.filters.update(md=md, cell=md_cell, label=md_label, embed=embedded)

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


def outcome(run: RunRecord, normal_ends: dict[str, str]) -> str:
    """e.g. `FINISHED (diverged), checks passed`; a status its experiment names a normal end
    is said in its words."""
    status = run.tags.get("status")
    checks = run.tags.get("checks", "not run")
    said = normal_ends.get(status, status) if status else ""
    return f"{run.status}{f' ({said})' if said else ''}, checks {checks}"


def run_link(tracker: Tracker, run: RunRecord) -> Link:
    """A run's id, linked to its page in MLflow's UI."""
    return Link(run.id, tracker.run_url(run.id, run.experiment_id))


def headline(demo: Demonstration) -> tuple[RunRecord, Sweep | None] | None:
    """The run a demonstration is shown by, and the sweep it is the best job of: its latest
    standalone run or its latest sweep's best job, whichever started later."""
    best = demo.latest_sweep.best if demo.latest_sweep else None
    single = demo.latest_standalone
    if best is not None and (single is None or best.start_time > single.start_time):
        return best, demo.latest_sweep
    return (single, None) if single else None


def build(tracker: Tracker, demos: list[Demonstration], options: Options,
          folder: Path) -> Page:
    """The summary page; figures it shows are written into `folder`/figures."""
    page = Page(folder)
    figures = folder / "figures"
    page.heading(1, "gradkit summary")
    scope = [f"store {tracker.uri}", f"made {datetime.now():%Y-%m-%d %H:%M:%S}"]
    if options.since:
        scope.append(f"runs since {options.since:%Y-%m-%d %H:%M}")
    page.paragraph("; ".join(scope) + ".")
    total = sum(len(demo.runs) for demo in demos)
    if not total:
        page.paragraph("The store holds no runs of these demonstrations yet: make some with "
                       "`make run` or `gradkit run experiment=NAME`.")
    page.heading(2, "Contents")
    contents = page.contents()
    page.table(["demonstration", "notebook section", "what its checks prove", "runs",
                "FINISHED", "FAILED", "checks passed / failed", "latest run"],
               [[d.name, d.section or "-", d.proves or "-", str(len(d.runs)),
                 str(d.count("FINISHED")), str(d.count("FAILED")),
                 f"{len(d.checks('passed'))} / {len(d.failed_checks)}",
                 f"{outcome(d.latest, d.normal_ends)}, {when(d.latest)}" if d.latest
                 else "no runs"]
                for d in demos])
    failing = [(demo, run) for demo in demos for run in demo.failed_checks]
    if failing:
        contents.entries.append(
            (page.heading(2, f"Failed checks ({plural(len(failing), 'run')})"), []))
        page.table(["demonstration", "run", "run id", "started", "error"],
                   [[demo.name, run.name, run_link(tracker, run), when(run),
                     run.tags.get("error", "")] for demo, run in failing])
    if total:
        page.figure(save(overview_figure(demos), figures / "overview.png"),
                    "Runs per demonstration by status")
    for demo in demos:
        contents.entries.append(add_demonstration(page, tracker, demo, figures))
    return page


def add_demonstration(page: Page, tracker: Tracker, demo: Demonstration,
                      folder: Path) -> tuple[Heading, list[Heading]]:
    """A demonstration's section; its heading and its sweeps' headings."""
    heading = page.heading(2, demo.name + (f" (notebook {demo.section})" if demo.section
                                           else ""))
    if demo.proves:
        page.paragraph(f"Its checks prove that {demo.proves}.")
    other = len(demo.runs) - demo.count("FINISHED") - demo.count("FAILED")
    page.paragraph(f"{plural(len(demo.runs), 'run')}: {demo.count('FINISHED')} FINISHED, "
                   f"{demo.count('FAILED')} FAILED, {other} other (killed or running); checks "
                   f"passed in {len(demo.checks('passed'))}, failed in {len(demo.failed_checks)}"
                   ", not run in the others.")
    shown = headline(demo)
    if shown is not None:
        add_headline(page, tracker, demo, *shown, folder)
    return heading, [add_sweep(page, tracker, demo, sweep, folder) for sweep in demo.sweeps]


def add_headline(page: Page, tracker: Tracker, demo: Demonstration, run: RunRecord,
                 sweep: Sweep | None, folder: Path) -> None:
    """The run a demonstration is shown by: where it comes from, its metrics, its figure."""
    which = ("the latest standalone run" if sweep is None else
             f"the best job (lowest objective) of the latest sweep, {sweep.parent.name}")
    page.heading(3, f"Headline run: {run.name}")
    page.paragraph("Run ", run_link(tracker, run), f", {which}, started {when(run)}"
                   f"{runs_on(run)}: {outcome(run, demo.normal_ends)}.")
    metrics = run.metrics
    key = sorted(name for name in metrics if not name.startswith("check/"))
    checks = sorted(name for name in metrics if name.startswith("check/"))
    rows: list[list[Cell]] = [[name, number(metrics[name])]
                              for name in key[:MAX_METRICS] + checks]
    if len(key) > MAX_METRICS:
        rows.append([f"... {len(key) - MAX_METRICS} more in MLflow", ""])
    page.table(["metric", "value"], rows)
    with_figures = next((candidate for candidate in [run, *demo.runs[:FIGURE_SEARCH]]
                         if tracker.artifact_files(candidate.id, "figures")), run)
    caption = (f"{demo.name}: main figure of {run.name}, {which}" if with_figures is run else
               f"{demo.name}: {run.name}, {which}, logged no figures; this is the main figure "
               f"of {with_figures.name} ({with_figures.id}), the latest run that made figures")
    copy_figure(page, tracker, with_figures.id, "figures",
                folder / f"{file_name(demo.name)}.png", caption)


def add_sweep(page: Page, tracker: Tracker, demo: Demonstration, sweep: Sweep,
              folder: Path) -> Heading:
    """A sweep's section; its heading."""
    parent = sweep.parent
    failed = sum(run.status != "FINISHED" for run in sweep.children)
    heading = page.heading(3, f"Sweep: {parent.name}")
    page.paragraph(f"Sweep {parent.tags.get('sweep_id', '?')}, parent run ",
                   run_link(tracker, parent), f": {parent.status}, {len(sweep.children)} job "
                   f"runs, {failed} not finished.")
    best = sweep.best
    if best is not None:
        page.paragraph(f"Best job by objective (lowest): {best.name}, objective "
                       f"{number(best.metrics['objective'])}, run ", run_link(tracker, best),
                       ".")
    copy_figure(page, tracker, parent.id, "report",
                folder / f"{file_name(demo.name)}-sweep-{file_name(parent.id)}.png",
                f"{demo.name}: comparison of the jobs of sweep {parent.name}")
    return heading


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
    page = build(tracker, demos, options, output)
    (output / "report.html").write_text(page.render("html"))
    (output / "report.md").write_text(page.render("md"))
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
        tracker = Tracker.from_config(cfg.tracking, base=Path.cwd(), existing=True)
        demos = collect(tracker, options)
        run_id = write_report(tracker, demos, options)
    except ConfigError as error:
        fail(str(error))
    runs = sum(len(demo.runs) for demo in demos)
    print(f"gradkit: summary of {plural(runs, 'run')} of {plural(len(demos), 'demonstration')}: "
          f"{options.output / 'report.html'}, {options.output / 'report.md'} "
          f"(MLflow experiment {REPORT_EXPERIMENT}, run {run_id})")
