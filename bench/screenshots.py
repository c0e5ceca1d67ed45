"""Screenshots of what a user sees in MLflow's UI and in the summary report, in headless Chromium.

Builds a store in a temporary folder (`gradkit run` of gradient_descent and hessian, the
18-job `sweep=descent_lr_start` with plotting.figures=false, `gradkit report`), serves it with
`gradkit ui --port <free port>`, and writes PNGs and index.txt (what each shows, its URL and
the texts read off the page) to bench/results/screenshots/. The UI is stopped at the end.

Needs Debian's Chromium (`apt-get install -y chromium`) and the Python package `playwright`
in the interpreter that runs this script (`python -m venv /tmp/pw && /tmp/pw/bin/pip install
playwright`; no `playwright install`: it drives /usr/bin/chromium). gradkit is the checkout's
.venv/bin/gradkit (or the one on PATH):
    /tmp/pw/bin/python bench/screenshots.py
Without Chromium or playwright it prints one line saying what is missing and exits 0.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import PROJECT_ROOT, RESULTS

OUT = RESULTS / "screenshots"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 1000}
ML = "workflowType=machine_learning"  # the Model training view `gradkit ui` points to


def missing() -> str | None:
    """What this script needs and lacks, in one line; None when all is there."""
    if not chromium():
        return "needs Chromium: apt-get install -y chromium (or set CHROMIUM=/path/to/chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return (f"needs the playwright package in {sys.executable}: pip install playwright "
                "(no `playwright install`: it drives the system Chromium)")
    if not gradkit():
        return "needs gradkit: make install (the checkout's .venv) or gradkit on PATH"
    return None


def chromium() -> str | None:
    """The Chromium executable: $CHROMIUM, or chromium / chromium-browser on PATH."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")


def gradkit() -> str | None:
    """The gradkit command: the checkout's .venv, else the one on PATH."""
    local = PROJECT_ROOT / ".venv" / "bin" / "gradkit"
    return str(local) if local.exists() else shutil.which("gradkit")


def build_store(work: Path) -> Path:
    """Two single runs, the descent_lr_start sweep and the summary report; the store folder."""
    store = work / "store"
    commands = [["run", "experiment=gradient_descent"], ["run", "experiment=hessian"],
                ["run", "sweep=descent_lr_start", "plotting.figures=false"],
                ["report", f"output={work / 'report'}"]]
    for args in commands:
        subprocess.run([gradkit(), *args, f"tracking.root={store}"], cwd=work, check=True,
                       env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return store


def environment() -> dict[str, str]:
    return {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, endpoint: str, body: dict | None = None) -> dict:
    """One call of MLflow's REST API (GET without a body, POST with one)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/{endpoint}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.load(reply)


def wait_for(base: str, ui: subprocess.Popen, seconds: float = 90) -> None:
    """Until the server answers; fails if it exits or does not answer in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ui.poll() is not None:
            raise RuntimeError(f"gradkit ui exited with status {ui.returncode}")
        try:
            api(base, "experiments/search", {"max_results": 1})
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"gradkit ui did not answer on {base} within {seconds:.0f} s")


def stop(ui: subprocess.Popen) -> None:
    """SIGTERM to the UI's process group (the server and its workers), SIGKILL if it stays."""
    try:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait()
    except ProcessLookupError:
        pass


def sweep_runs(base: str) -> tuple[str, str, list[str]]:
    """gradient_descent's experiment id, its single run and the sweep's children."""
    experiment = api(base, "experiments/get-by-name?experiment_name=gradient_descent")
    eid = experiment["experiment"]["experiment_id"]
    runs = api(base, "runs/search", {"experiment_ids": [eid], "max_results": 100})["runs"]
    parent_of = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])
                                       }.get("mlflow.parentRunId") for r in runs}
    children = [run for run, parent in parent_of.items() if parent]
    single = next(run for run, parent in parent_of.items()
                  if not parent and run not in parent_of.values())
    return eid, single, children


def chart_sections(page) -> list[str]:
    """The section headings of a run's Model metrics tab, e.g. `check/descent (2)`: MLflow
    renders each heading's name and its chart count on lines of their own."""
    lines = [line.strip() for line in page.inner_text("body").splitlines()]
    return [f"{name} {count}" for name, count in itertools.pairwise(lines)
            if re.fullmatch(r"\(\d+\)", count)]


def texts(page, selector: str, limit: int = 60) -> list[str]:
    """The texts of the elements matching `selector`, each once (blank ones left out)."""
    found = [" ".join(t.split()) for t in page.locator(selector).all_inner_texts()[:limit]]
    return [t for t in dict.fromkeys(found) if t]


class Shooter:
    """Takes the screenshots on one page and notes what each shows."""

    def __init__(self, page, base: str) -> None:
        self.page, self.base, self.notes = page, base, []

    def open(self, route: str, ready: str | None = None) -> str:
        """Load `route` (a hash route of the UI, or a full URL) afresh and let it render."""
        url = route if "://" in route else f"{self.base}/{route}"
        self.page.goto("about:blank")  # a full load, as a pasted link: no state kept in memory
        self.page.goto(url, wait_until="load")
        if ready:
            self.page.locator(ready).first.wait_for(timeout=30_000)
        self.pause(4000)  # the app fetches, then charts animate in
        return url

    def pause(self, ms: int = 1500) -> None:
        self.page.wait_for_timeout(ms)

    def shoot(self, name: str, what: str, read: dict[str, str] | None = None,
              full: bool = False) -> None:
        """A PNG of the page as it is now, and a note: what it shows, its URL, texts on it."""
        self.page.screenshot(path=str(OUT / f"{name}.png"), full_page=full)
        url = self.page.url
        if "runs=[" in url:  # 18 run ids say nothing to a reader
            url = url[:url.index("runs=[") + 6] + "<run ids>" + url[url.index("]"):]
        lines = [f"{name}.png: {what}", f"  url: {url}"]
        for label, selector in (read or {}).items():
            lines.append(f"  {label}: {' | '.join(texts(self.page, selector))}")
        self.notes.append("\n".join(lines))

    def click(self, text: str) -> None:
        self.page.get_by_text(text, exact=True).first.click()
        self.pause()

    def tick_columns(self, names: list[str]) -> None:
        """Show `names` in the runs table through its Columns menu (search, tick, close)."""
        self.page.get_by_test_id("column-selection-dropdown").first.click()
        for name in names:
            self.page.get_by_placeholder("Search columns").fill(name)
            self.pause(500)
            self.page.get_by_text(name, exact=True).first.click()
        self.page.keyboard.press("Escape")
        self.pause()

    def choose(self, select_id: str, option: str) -> str:
        """Pick `option` in the chart select `select_id`; the options it offered."""
        self.page.locator(f"#{select_id}").click()
        self.pause(800)
        offered = texts(self.page, "[role=option]", limit=200)
        self.page.get_by_role("option", name=option, exact=True).click()
        self.pause()
        return f"{select_id} offers {len(offered)}: {', '.join(offered)}"

    def select_sweep(self, parent: str) -> None:
        """In the runs table: expand the sweep's parent row (+) and tick it (and its jobs)."""
        cell = self.page.locator('[role=gridcell][col-id="attributes.`Run Name`"]',
                                 has_text=parent).first
        cell.locator("button").first.click()
        self.pause()
        row = self.page.locator("[role=row]", has_text=parent).first.get_attribute("row-index")
        self.page.locator(f'[role=row][row-index="{row}"] input[type=checkbox]').first.click()
        self.pause()


RUNS_TABLE = {"column headers": "[role=columnheader]", "buttons": "button"}
SELECTS = {"selects": "[role=combobox]"}


def shoot_all(s: Shooter, eid: str, single: str, children: list[str], report: Path) -> None:
    """(a) home, (b) runs table, (c) compare views of the sweep's children, (d) a run,
    (e) the report; each click a user would make is one call here."""
    s.open("#/")
    s.shoot("a1_home", "what http://HOST:PORT/ opens on", {"headings": "h1, h2, h3",
            "side bar": "nav a, aside a", "mode": "[role=radio], [role=tab]"})
    s.open(f"#/?{ML}")
    s.shoot("a2_home_model_training", "the link `gradkit ui` prints", {"headings": "h1, h2, h3"})
    s.click("gradient_descent")
    s.shoot("a3_experiment_from_home", "a2, then a click on gradient_descent in Recent "
            "Experiments", {"headings": "h1, h2", "mode": "[role=radio]"})
    s.click("Got it")  # the "Detect Issues in Your Traces" popover blocks the page
    s.click("Model training")
    s.shoot("a4_model_training_toggle", "a3, then Got it and the Model training toggle",
            {"headings": "h1, h2"})
    s.open(f"#/experiments/{eid}/runs?{ML}", "[role=columnheader]")
    s.shoot("b1_runs_table", "gradient_descent's runs table (the run links gradkit prints "
            "lead here by the breadcrumb Runs)", RUNS_TABLE)
    s.page.get_by_test_id("column-selection-dropdown").first.click()
    s.pause()
    s.shoot("b2_runs_table_columns", "its Columns menu: what is shown or hidden by default")
    s.page.keyboard.press("Escape")
    s.tick_columns(["final_loss", "experiment.learning_rate", "experiment.start"])
    s.page.get_by_role("button", name="Close").first.click()  # the MLflow Assistant panel
    s.pause()
    s.shoot("b3_runs_table_columns_ticked", "after Columns > final_loss, "
            "experiment.learning_rate, experiment.start > Esc, and closing the Assistant",
            RUNS_TABLE)
    s.select_sweep("descent_lr_start")
    s.shoot("b4_sweep_selected", "the sweep's parent expanded (+) and ticked: its jobs too",
            {"selected": ".ag-row-selected [col-id='attributes.`Run Name`']"})
    s.page.get_by_role("button", name="Compare", exact=True).click()
    s.pause(4000)
    s.shoot("c0_compare_clicked", "what the Compare button opens", {"title": "h1, h2"})
    compare = (f"#/compare-runs?runs={json.dumps(children, separators=(',', ':'))}"
               f"&experiments={json.dumps([eid])}&{ML}")
    kept = s.page.evaluate("Object.keys(localStorage).join(', ')")
    s.notes[-1] += f"\n  localStorage keys the UI kept so far: {kept}"
    s.open(compare, "[role=tab]")
    s.shoot("c1_compare_parallel", f"compare view of the sweep's {len(children)} jobs "
            "(#/compare-runs?runs=[...]&experiments=[...]) opened as a link",
            {"title": "h1, h2", "tabs": "[role=tab]", "chosen": "[class*=select-selection-item]"
             ", [class*=tag]"})
    s.click("Scatter Plot")
    s.shoot("c2_compare_scatter", "Scatter Plot tab as it opens", SELECTS)
    chosen = [s.choose("x-axis-selector", "experiment.learning_rate"),
              s.choose("y-axis-selector", "log10/final_loss")]
    s.shoot("c3_compare_scatter_chosen", "Scatter: x=experiment.learning_rate, "
            "y=log10/final_loss (2 selects, 4 clicks)", SELECTS)
    s.notes[-1] += "".join(f"\n  {line}" for line in chosen)
    s.click("Contour Plot")
    s.shoot("c4_compare_contour", "Contour Plot tab as it opens",
            {**SELECTS, "message": "text=/unique data points/"})
    chosen = [s.choose("yaxis-selector", "experiment.start.0"),
              s.choose("zaxis-selector", "log10/final_loss")]
    s.shoot("c5_compare_contour_chosen", "Contour: x=experiment.learning_rate (default), "
            "y=experiment.start.0, z=log10/final_loss", SELECTS)
    s.notes[-1] += "".join(f"\n  {line}" for line in chosen)
    s.page.mouse.wheel(0, 1200)
    s.pause()
    s.shoot("c6_compare_tables", "compare view scrolled to its parameter and metric tables")
    s.open(f"#/experiments/{eid}/runs/{single}?{ML}", "[role=tab]")
    s.shoot("d1_run_overview", "one gradient_descent run (Overview tab)",
            {"tabs": "[role=tab]", "headings": "h2, h3"})
    s.page.get_by_role("link", name="Runs", exact=True).first.click()
    s.pause(3000)
    s.shoot("d0_breadcrumb_runs", "a run link gradkit prints, then the Runs breadcrumb "
            "(1 click)", {"headings": "h1, h2"})
    s.open(f"#/experiments/{eid}/runs/{single}?{ML}", "[role=tab]")
    s.click("Model metrics")
    s.shoot("d2_run_metrics", "its Model metrics tab (a bar per metric)")
    s.notes[-1] += f"\n  sections, top to bottom: {' | '.join(chart_sections(s.page))}"
    s.click("Artifacts")
    s.click("figures")
    s.page.get_by_text(".png").first.click()
    s.pause(3000)
    s.shoot("d3_run_artifacts", "its Artifacts tab, figures/ opened, first PNG previewed",
            {"files": "[role=treeitem], [class*=tree] span"})
    s.open(report.resolve().as_uri())
    s.shoot("e1_report_top", "the summary report (report.html) as it opens",
            {"headings": "h1, h2"})
    s.shoot("e2_report_full", "the whole report page", full=True)


def main() -> None:
    need = missing()
    if need:
        print(f"screenshots: skipped: {need}")
        return
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    for old in [*OUT.glob("*.png"), *OUT.glob("index.txt")]:
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="gradkit-screens-") as tmp:
        work = Path(tmp)
        started = time.monotonic()
        store = build_store(work)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with open(work / "ui.log", "w") as log:
            ui = subprocess.Popen([gradkit(), "ui", "--store", str(store), "--port", str(port)],
                                  env=environment(), stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            wait_for(base, ui)
            eid, single, children = sweep_runs(base)
            with sync_playwright() as pw:
                browser = pw.chromium.launch_persistent_context(
                    work / "profile", executable_path=chromium(), args=CHROMIUM_FLAGS,
                    viewport=VIEWPORT)  # a new, empty profile
                shooter = Shooter(browser.pages[0], base)
                browser.set_default_timeout(20_000)
                try:
                    shoot_all(shooter, eid, single, children, work / "report" / "report.html")
                finally:
                    browser.close()
        finally:
            stop(ui)
        version = subprocess.run([chromium(), "--version"], capture_output=True, text=True)
        head = (f"gradkit screenshots, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                f"{version.stdout.strip()}, {time.monotonic() - started:.0f} s\n")
        (OUT / "index.txt").write_text(head + "\n\n".join(shooter.notes) + "\n")
    print(f"screenshots: {len(shooter.notes)} PNGs and index.txt in {OUT}")


if __name__ == "__main__":
    main()
