"""`gradkit run --help`: the config groups a user can choose from, and nothing internal."""

from __future__ import annotations

import re


def test_help_lists_the_groups_a_user_chooses_from_and_no_internal_one(gradkit):
    code, _ = gradkit("experiment=hessian", "--help")

    assert code == 0
    groups = re.search(r"== Configuration groups ==\n.*?\n\n(.*?)\n\n", gradkit.out, re.S)
    listed = [line.split(":")[0] for line in groups.group(1).splitlines()]
    assert listed == ["data", "experiment", "loss", "model", "search", "sweep", "tracking"]
    assert "point: null" in gradkit.out  # the selected experiment's keys, with their defaults
