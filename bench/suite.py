"""The test suite's time next to the reference notebook's, measured side by side in one run.

  notebook  the reference notebook's code run as one script with the same torch (as in
            bench/first_hour.py), when `--notebook FILE` names its text: once before the
            suite and once after, and their mean (this machine's speed drifts within minutes)
  suite     the whole suite as `make test` runs it (`pytest -n auto`: unit, integration, system)
  unit      the unit tests alone, as `make test-fast` runs them

Each is measured in wall seconds and in CPU seconds (user + system, its processes summed),
which a busy or throttled machine inflates less. Prints a table and writes
bench/results/suite.json.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

from common import PROJECT_ROOT, save_results
from first_hour import notebook_script, wall

PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "auto"]
SUITE = [*PYTEST, "--dist", "loadscope"]  # as `make test` runs it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebook", type=Path, help="the reference notebook's text")
    args = parser.parse_args()
    results: dict[str, float] = {}
    if args.notebook:
        script = notebook_script(args.notebook, Path(tempfile.mkdtemp(prefix="gradkit-suite-")))
        before = timed([sys.executable, str(script)], script.parent)
    results["suite"], results["suite_cpu"] = timed(SUITE, PROJECT_ROOT)
    if args.notebook:
        after = timed([sys.executable, str(script)], script.parent)
        results["notebook_before"], results["notebook_after"] = before[0], after[0]
        results["notebook"] = (before[0] + after[0]) / 2
        results["notebook_cpu"] = (before[1] + after[1]) / 2
        results["suite_vs_notebook"] = results["suite"] / results["notebook"]
        results["suite_vs_notebook_cpu"] = results["suite_cpu"] / results["notebook_cpu"]
    results["unit"], results["unit_cpu"] = timed([*PYTEST, "tests/unit"], PROJECT_ROOT)
    save_results("suite", results)
    for name, value in results.items():
        print(f"  {name:<22} {value:8.2f}{'x' if '_vs_' in name else ' s'}")


def timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds of `command` and the CPU seconds of its processes (those waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = wall(command, cwd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


if __name__ == "__main__":
    main()
