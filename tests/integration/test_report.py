"""The summary report: read back from a store with runs of every demonstration, and an empty one."""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from conftest import EXPERIMENTS, PARENT_TAG, client_for, composed_once, runs_of

from gradkit.cli.run import main as run_main
from gradkit.reporting import report
from gradkit.tracking.store import Tracker


def gradkit_run(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["gradkit run", *args])
    try:
        run_main()
    except SystemExit as exit_:
        assert not exit_.code, exit_.code


PNG_BYTES = bytes.fromhex(  # a 1x1 PNG
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


# The report reads runs, not how much they computed: the costly demonstrations run small
# (their checks still pass, lr_finder still stops at its threshold); gradient_flow runs on a
# chosen model and data, which the report names.
SMALL = {
    "accumulation": ["experiment.optimizer_steps=2"],
    "adversarial": ["experiment.epochs=1", "experiment.examples=2"],
    "checkpointing": ["experiment.depth=4", "experiment.width=100", "experiment.repeats=1"],
    "gradient_descent": ["experiment.max_iterations=100"],
    "gradient_flow": ["model=mlp", "data=synthetic_regression"],
    "landscape": ["experiment.resolution=50"],
    "loss_curvature": ["experiment.hutchinson_samples=1000"],
    "lr_finder": ["experiment.validation_steps=10"],
}


@pytest.fixture(scope="module")
def filled(tmp_path_factory, empty_store):
    """A store with one run of every demonstration and a 2-job descent sweep."""
    root = tmp_path_factory.mktemp("filled")
    shutil.copy(empty_store, root / "mlflow.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("HYDRA_FULL_ERROR", raising=False)
        for name in EXPERIMENTS:
            gradkit_run(patch, f"experiment={name}", *SMALL.get(name, []),
                        f"tracking.root={root}", f"hydra.run.dir={root / 'out' / name}")
        gradkit_run(patch, "--multirun", "experiment=gradient_descent",
                    "experiment.learning_rate=2e-3,1e-2", "experiment.max_iterations=100",
                    f"tracking.root={root}", f"hydra.sweep.dir={root / 'sweep'}",
                    "plotting.figures=false")
    return root


@pytest.fixture(autouse=True, scope="module")
def _catalogue_composed_once():
    """Each report composes every experiment's config to describe the demonstrations; the
    configs do not change within this module: composed by its first report."""
    with composed_once(report, "catalogue"):
        yield


def make_report(capsys, *args: str) -> tuple[int, str, str]:
    """`gradkit report ARGS` in this process: exit code, stdout, stderr."""
    try:
        report.main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The overview table of report.md: demonstration -> its cells."""
    header = "| demonstration | notebook section |"
    lines = markdown[markdown.index(header):].split("\n\n")[0].splitlines()[2:]
    return {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


NORMAL_ENDS = {("lr_finder", "diverged"): "stopped at its divergence threshold"}


def ui_page(run) -> str:
    """The run's page in MLflow's UI, as `gradkit run` prints it for a local store."""
    return (f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/"
            f"{run.info.run_id}?workflowType=machine_learning")


def summary_runs(store) -> list:
    return runs_of(store, report.REPORT_EXPERIMENT)


def test_report_of_every_demonstration(filled, tmp_path, capsys):
    code, out, err = make_report(capsys, f"tracking.root={filled}", f"output={tmp_path}")

    assert code == 0, err
    markdown = (tmp_path / "report.md").read_text()
    rows = table_rows(markdown)
    assert list(rows) == sorted(EXPERIMENTS, key=lambda n: report.section_key(rows[n][0]))
    for name in EXPERIMENTS:
        runs = [r for r in runs_of(filled, name) if "sweep_dir" not in r.data.tags]
        section, proves, count, finished, failed, checks, latest = rows[name]
        assert re.fullmatch(r"\d+\.\d+|beyond", section) and proves != "-"
        assert (int(count), int(finished), int(failed), checks) == (
            len(runs), sum(r.info.status == "FINISHED" for r in runs), 0, f"{len(runs)} / 0")
        newest = max(runs, key=lambda r: r.info.start_time)
        status = newest.data.tags.get("status")
        outcome = f" ({NORMAL_ENDS.get((name, status), status)})" if status else ""
        assert latest.startswith(f"FINISHED{outcome}, checks passed")
        assert f"figures/{name}.png" in markdown  # the headline run's main figure
        if name != "gradient_descent":  # its sweep is newer: test_the_headline_...
            single = max((r for r in runs if PARENT_TAG not in r.data.tags),
                         key=lambda r: r.info.start_time)
            assert f"Run [{single.info.run_id}]({ui_page(single)}), the latest standalone " \
                   "run," in markdown

    page = (tmp_path / "report.html").read_text()
    assert 'src="data:image/png;base64,' in page and 'src="figures/' not in page
    assert all(f"<td>{name}</td>" in page for name in EXPERIMENTS)
    [summary] = [r for r in summary_runs(filled) if f"run {r.info.run_id}" in out]
    assert summary.info.status == "FINISHED"
    all_runs = sum(len([r for r in runs_of(filled, n) if "sweep_dir" not in r.data.tags])
                   for n in EXPERIMENTS)
    assert summary.data.metrics["runs"] == all_runs
    assert summary.data.metrics["checks_failed"] == 0
    artifacts = {a.path for a in client_for(filled).list_artifacts(summary.info.run_id)}
    assert {"report.html", "report.md", "figures"} <= artifacts


def test_sweep_section_names_the_best_job(filled, tmp_path, capsys):
    code, _, err = make_report(capsys, f"tracking.root={filled}", f"output={tmp_path}",
                               "experiments=[gradient_descent]")

    assert code == 0, err
    runs = runs_of(filled, "gradient_descent")
    [parent] = [r for r in runs if "sweep_dir" in r.data.tags]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(children) == 2
    best = min(children, key=lambda r: r.data.metrics["objective"])
    markdown = (tmp_path / "report.md").read_text()
    assert list(table_rows(markdown)) == ["gradient_descent"]
    assert f"Best job by objective (lowest): {best.info.run_name}," in markdown
    assert f"run [{best.info.run_id}]({ui_page(best)})." in markdown
    assert f"### Headline run: {best.info.run_name}\n" in markdown  # the sweep is newest
    assert f"figures/gradient_descent-sweep-{parent.info.run_id}.png" in markdown
    assert (tmp_path / "figures" / f"gradient_descent-sweep-{parent.info.run_id}.png").is_file()


@pytest.mark.parametrize(("sweeps", "shown"), [("none", 0), ("all", 1), ("latest", 1)])
def test_sweep_selection(sweeps, shown, filled, tmp_path, capsys):
    code, _, err = make_report(capsys, f"tracking.root={filled}", f"output={tmp_path}",
                               "experiments=[gradient_descent,jacobian]", f"sweeps={sweeps}")

    assert code == 0, err
    assert (tmp_path / "report.md").read_text().count("### Sweep:") == shown


def test_sweep_by_id(filled, tmp_path, capsys):
    [parent] = [r for r in runs_of(filled, "gradient_descent") if "sweep_dir" in r.data.tags]
    for wanted in (parent.data.tags["sweep_id"], parent.info.run_id):
        code, _, err = make_report(capsys, f"tracking.root={filled}", f"output={tmp_path}",
                                   "experiments=[gradient_descent]", f"sweeps=[{wanted}]")
        assert code == 0, err
        assert f"parent run [{parent.info.run_id}]" in (tmp_path / "report.md").read_text()


def test_failed_checks_are_listed_first(filled, tmp_path, empty_store, capsys):
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(filled / "mlflow.db", store / "mlflow.db")  # artifacts stay where they are
    [run] = runs_of(store, "jacobian")
    client = client_for(store)
    client.set_tag(run.info.run_id, "checks", "failed")
    client.set_tag(run.info.run_id, "error", "ChecksFailed: jacobian: checks failed: jacrev")

    code, _, err = make_report(capsys, f"tracking.root={store}", f"output={tmp_path / 'out'}")

    assert code == 0, err
    markdown = (tmp_path / "out" / "report.md").read_text()
    rows = table_rows(markdown)
    assert next(iter(rows)) == "jacobian"
    assert rows["jacobian"][5] == "0 / 1"
    failed_section = markdown.index("## Failed checks (1 run)")
    assert failed_section < markdown.index("## jacobian")
    assert run.info.run_id in markdown[failed_section:markdown.index("## jacobian")]


def test_empty_store_says_so(store, tmp_path, capsys):
    code, out, err = make_report(capsys, f"tracking.root={store}", f"output={tmp_path}")

    assert code == 0, err
    markdown = (tmp_path / "report.md").read_text()
    assert "The store holds no runs of these demonstrations yet" in markdown
    assert set(table_rows(markdown)) == set(EXPERIMENTS)
    assert all(row[-1] == "no runs" for row in table_rows(markdown).values())
    assert "summary of 0 runs" in out
    [summary] = summary_runs(store)
    assert summary.data.metrics["runs"] == 0


def test_a_folder_without_a_store_is_refused_and_left_alone(tmp_path, capsys):
    """A mistyped tracking.root gets one line, not a new store with an empty summary."""
    code, _, err = make_report(capsys, f"tracking.root={tmp_path / 'mlrun'}",
                               f"output={tmp_path / 'report'}")

    assert code == 1
    assert err == (f"gradkit: tracking.root={tmp_path / 'mlrun'} holds no MLflow store (no "
                   "mlflow.db); run an experiment first or pass the folder of the store that "
                   "holds the runs\n")
    assert sorted(tmp_path.iterdir()) == []


def test_since_a_later_date_leaves_no_runs(filled, tmp_path, capsys):
    code, _, err = make_report(capsys, f"tracking.root={filled}", f"output={tmp_path}",
                               "since=2999-01-01")

    assert code == 0, err
    assert "holds no runs" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(("option", "named"), [
    ("experiments=[nonexistent]", "experiments: 'nonexistent' matches no demonstration"),
    ("experiments=jacobian", "experiments='jacobian' must be a list"),
    ("sweeps=[0123456789abcdef]", "sweeps: '0123456789abcdef' matches no sweep"),
    ("sweeps=newest", "sweeps='newest' is not allowed; choose one of: latest, all, none"),
    ("since=yesterday", "since='yesterday' is not a date"),
    ("bogus=1", "bogus"),
])
def test_bad_option_is_one_line_and_writes_nothing(option, named, filled, tmp_path, capsys):
    before = len(summary_runs(filled))

    code, _, err = make_report(capsys, f"tracking.root={filled}", f"output={tmp_path}", option)

    assert code == 1
    assert named in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "report.html").exists()
    assert len(summary_runs(filled)) == before


def test_searches_read_every_page(filled, monkeypatch):
    from gradkit.tracking import store as tracking

    tracker = tracking.Tracker.from_config({"kind": "local", "root": str(filled)})
    experiment_id = tracker.experiments()["gradient_descent"]
    everything = client_for(filled).search_runs([experiment_id], max_results=50000)
    monkeypatch.setattr(tracking, "SEARCH_PAGE", 1)

    paged = tracker.search_runs([experiment_id], order_by=["attributes.start_time DESC"])

    assert len(everything) > 2 * tracking.SEARCH_PAGE
    assert sorted(r.id for r in paged) == sorted(r.info.run_id for r in everything)
    starts = [r.start_time for r in paged]
    assert starts == sorted(starts, reverse=True)


def test_names_and_values_from_the_store_cannot_write_outside_or_inject(store, tmp_path,
                                                                          capsys):
    """An experiment named like a path writes its figure inside the output folder; HTML in a
    run's values is shown, not run, in report.md as in report.html."""
    tracker = Tracker.from_config({"kind": "local", "root": str(store)})
    script = "<script>alert(1)</script>"
    run_id = tracker.start_run("../../escaped", "<img src=x onerror=alert(1)>", {
        "checks": "failed", "error": script})
    figure = tmp_path / "figures" / "f.png"
    figure.parent.mkdir()
    figure.write_bytes(PNG_BYTES)
    tracker.log_artifact(run_id, figure, "figures")
    tracker.end(run_id, "FAILED")
    output = tmp_path / "deep" / "out"

    code, _, err = make_report(capsys, f"tracking.root={store}", f"output={output}")

    assert code == 0, err
    written = [p for p in tmp_path.rglob("*.png") if p != figure]
    assert any(output in p.parents for p in written)
    assert all(output in p.parents or store in p.parents for p in written), written
    markdown = (output / "report.md").read_text()
    assert "<script>" not in markdown and "<img src=x" not in markdown
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown
    assert "<script>" not in (output / "report.html").read_text()


def test_an_output_that_cannot_be_a_folder_is_one_line(store, tmp_path, capsys):
    blocker = tmp_path / "a file"
    blocker.write_text("")

    code, _, err = make_report(capsys, f"tracking.root={store}", f"output={blocker / 'report'}")

    assert code == 1
    assert err.strip() == (f"gradkit: output={blocker / 'report'}: the report cannot be written "
                           "there (Not a directory); choose a writable folder")


def test_a_runs_model_and_data_are_named_in_the_report(filled, tmp_path, capsys):
    [run] = runs_of(filled, "gradient_flow")  # run on model=mlp data=synthetic_regression
    assert run.data.tags["model"] == "mlp"

    code, _, err = make_report(capsys, f"tracking.root={filled}", f"output={tmp_path / 'r'}",
                               "experiments=[gradient_flow]")

    assert code == 0, err
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert ", on model=mlp, data=synthetic_regression:" in markdown


def test_contents_link_each_demonstration_and_its_sweeps_in_both_formats(filled, tmp_path,
                                                                        capsys):
    code, _, err = make_report(capsys, f"tracking.root={filled}", f"output={tmp_path}",
                               "experiments=[gradient_descent,jacobian]")

    assert code == 0, err
    [parent] = [r for r in runs_of(filled, "gradient_descent") if "sweep_dir" in r.data.tags]
    sweep = f"Sweep: {parent.info.run_name}"
    markdown = (tmp_path / "report.md").read_text()
    contents = markdown[markdown.index("## Contents\n"):markdown.index("| demonstration |")]
    entries = re.findall(r"^( *)- \[(.+)\]\(#(.+)\)$", contents, re.MULTILINE)
    assert [(indent, text) for indent, text, _ in entries] == [
        ("", "jacobian (notebook 3.1)"), ("", "gradient_descent (notebook 4.2)"), ("  ", sweep)]
    for _, text, anchor in entries:  # GitHub's and MkDocs' anchor of each heading
        assert re.search(rf"^#+ {re.escape(text)}$", markdown, re.MULTILINE)
        assert anchor == re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
    page = (tmp_path / "report.html").read_text()
    nav = page[page.index("<nav>"):page.index("</nav>")]
    targets = re.findall(r'<a href="#([^"]+)">([^<]+)</a>', nav)
    assert targets == [(anchor, text) for _, text, anchor in entries]
    for anchor, text in targets:
        assert re.search(rf'<h[23] id="{anchor}">{re.escape(text)}</h[23]>', page)

    tracker = Tracker.from_config({"kind": "local", "root": str(filled)})
    [jacobian] = runs_of(filled, "jacobian")
    for run, experiment in ((parent, "gradient_descent"), (jacobian, "jacobian")):
        url = ui_page(run)
        assert tracker.describe(run.info.run_id, experiment).endswith(url)  # as `gradkit run`
        assert f"[{run.info.run_id}]({url})" in markdown
        assert f'<a href="{url}">{run.info.run_id}</a>' in page


def test_an_lr_range_test_stopped_at_its_threshold_is_not_flagged_a_real_divergence_is(
        filled, tmp_path, capsys):
    [finder] = runs_of(filled, "lr_finder")
    assert (finder.data.tags["status"], finder.data.metrics["diverged"]) == ("diverged", 1.0)
    descents = sorted(runs_of(filled, "gradient_descent"), key=lambda r: r.info.start_time)
    assert descents[-1].data.tags["status"] == "diverged"  # the sweep's last job: lr 1e-2

    code, _, err = make_report(capsys, f"tracking.root={filled}", f"output={tmp_path}",
                               "experiments=[gradient_descent,lr_finder]")

    assert code == 0, err
    markdown = (tmp_path / "report.md").read_text()
    rows = table_rows(markdown)
    assert rows["lr_finder"][-1].startswith(
        "FINISHED (stopped at its divergence threshold), checks passed")
    assert "(diverged)" not in markdown[markdown.index("## lr_finder"):]
    assert rows["gradient_descent"][-1].startswith("FINISHED (diverged), checks passed")


def made_run(tracker: Tracker, name: str, tags: dict, status: str = "FINISHED",
             objective: float | None = None, figure: Path | None = None) -> str:
    """A run of experiment `demo` made directly in the store, a millisecond after the last."""
    time.sleep(0.005)
    run_id = tracker.start_run("demo", name, tags)
    if objective is not None:
        tracker.log_metrics(run_id, {"objective": objective})
    if figure is not None:
        tracker.log_artifact(run_id, figure, "figures")
    tracker.end(run_id, status)
    return run_id


@pytest.mark.parametrize("standalone_last", [False, True], ids=["sweep newer", "run newer"])
def test_the_headline_is_the_newer_of_the_latest_standalone_run_and_the_sweeps_best_job(
        standalone_last, store, tmp_path, capsys):
    tracker = Tracker.from_config({"kind": "local", "root": str(store)})
    figure = tmp_path / "figures" / "f.png"
    figure.parent.mkdir()
    figure.write_bytes(PNG_BYTES)
    made_run(tracker, "standalone, older", {}, figure=figure)
    parent = made_run(tracker, "the sweep", {"sweep_dir": "multirun/x", "sweep_id": "x"})
    jobs = {PARENT_TAG: parent}
    made_run(tracker, "job 0", jobs, objective=2.0, figure=figure)
    made_run(tracker, "job 1", jobs, objective=0.5, figure=figure)  # the best
    made_run(tracker, "job 2", jobs, "FAILED", objective=0.1, figure=figure)  # not finished
    made_run(tracker, "job 3", jobs, objective=3.0, figure=figure)  # the last
    if standalone_last:
        made_run(tracker, "standalone, newer", {}, figure=figure)

    code, _, err = make_report(capsys, f"tracking.root={store}", f"output={tmp_path / 'r'}")

    assert code == 0, err
    markdown = (tmp_path / "r" / "report.md").read_text()
    if standalone_last:
        headline, which = "standalone, newer", "the latest standalone run"
    else:
        headline = "job 1"
        which = "the best job (lowest objective) of the latest sweep, the sweep"
    assert f"### Headline run: {headline}\n" in markdown
    assert f"![demo: main figure of {headline}, {which}](figures/demo.png)" in markdown


def test_a_demonstration_of_the_users_own_config_is_described_by_its_runs_class(
        store, tmp_path, capsys):
    """A store's experiment gradkit does not list (a --config-dir of its own) is described
    by the class its runs' `experiment_target` tag names: what its checks prove, its normal
    ends."""
    from gradkit.experiments.lr_finder import LrFinder

    tracker = Tracker.from_config({"kind": "local", "root": str(store)})
    made_run(tracker, "range test", {"experiment_target": "gradkit.experiments.lr_finder."
                                     "LrFinder", "status": "diverged"})

    code, _, err = make_report(capsys, f"tracking.root={store}", f"output={tmp_path / 'r'}")

    assert code == 0, err
    row = table_rows((tmp_path / "r" / "report.md").read_text())["demo"]
    assert row[1] == LrFinder.proves
    assert row[-1].startswith("FINISHED (stopped at its divergence threshold), checks not run")
