"""`gradkit list` as a process: everything printed, no store opened."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import EXPERIMENTS

from gradkit.cli.catalog import render

# `python -m gradkit list`, saying on stderr at exit which of MLflow's modules it loaded
LIST = ("import atexit, runpy, sys\n"
        "atexit.register(lambda: print(sorted({'mlflow', 'sqlalchemy'} & set(sys.modules)), "
        "file=sys.stderr))\n"
        "sys.argv = ['gradkit', 'list']\n"
        "runpy.run_module('gradkit', run_name='__main__', alter_sys=True)")


@pytest.fixture(scope="module")
def listed() -> subprocess.CompletedProcess:
    """One `gradkit list` process, read by each test."""
    return subprocess.run([sys.executable, "-c", LIST], capture_output=True, text=True,
                          timeout=60, check=True)


def test_the_command_prints_everything(listed):
    assert listed.stdout == render() + "\n"
    assert all(name in listed.stdout for name in EXPERIMENTS)
    assert "learning_rate=0.001" in listed.stdout


def test_the_catalog_answers_without_opening_a_store(listed):
    assert listed.stderr.strip().splitlines()[-1] == "[]"
