"""The report's pieces that need no store."""

from __future__ import annotations

import logging

from gradkit.reporting.report import Demonstration, describe


def test_a_class_that_cannot_be_imported_leaves_the_entry_bare_and_logs_nothing(caplog):
    """Runs of a user's experiment, reported from outside their project."""
    demo = Demonstration("cubic")
    with caplog.at_level(logging.DEBUG):
        describe(demo, "no_such_project.experiments.Cubic", "beyond")

    assert (demo.section, demo.proves) == ("", "")
    assert caplog.records == []


def test_an_importable_class_fills_in_section_and_proofs():
    demo = Demonstration("jacobian")
    describe(demo, "gradkit.experiments.jacobian.Jacobian", "3.1")

    assert demo.section == "3.1"
    assert demo.proves
