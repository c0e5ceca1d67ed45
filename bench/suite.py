"""The test suite's time next to the reference notebook's, measured side by side in one run.

  notebook  the reference notebook's code run as one script with the same torch (as in
            bench/first_hour.py), when `--notebook FILE` names its text
  suite     the whole suite as `make test` runs it (`pytest -n auto`: unit, integration, system)
  unit      the unit tests alone, as `make test-fast` runs them

Prints a table and writes bench/results/suite.json.
"""

from __future__ import annotations

import argparse
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
    work = Path(tempfile.mkdtemp(prefix="gradkit-suite-"))
    results: dict[str, float] = {}
    if args.notebook:
        script = notebook_script(args.notebook, work)
        results["notebook"] = wall([sys.executable, str(script)], script.parent)
    results["suite"] = wall(SUITE, PROJECT_ROOT)
    results["unit"] = wall([*PYTEST, "tests/unit"], PROJECT_ROOT)
    if "notebook" in results:
        results["suite_vs_notebook"] = results["suite"] / results["notebook"]
    save_results("suite", results)
    for name, value in results.items():
        print(f"  {name:<18} {value:8.2f}{'x' if '_vs_' in name else ' s'}")


if __name__ == "__main__":
    main()
