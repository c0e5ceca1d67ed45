"""`gradkit list` as a process: everything printed, no store opened."""

from __future__ import annotations

import subprocess
import sys

from conftest import EXPERIMENTS

from gradkit.cli.catalog import render


def test_the_command_prints_everything():
    done = subprocess.run([sys.executable, "-m", "gradkit", "list"], capture_output=True,
                          text=True, timeout=60, check=True)

    assert done.stdout == render() + "\n"
    assert all(name in done.stdout for name in EXPERIMENTS)
    assert "learning_rate=0.001" in done.stdout


def test_the_catalog_answers_without_opening_a_store():
    probe = ("import sys, gradkit.cli.catalog as c; c.render(); "
             "print(sorted({'mlflow', 'sqlalchemy'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
