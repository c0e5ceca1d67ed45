"""`gradkit reproduce`: its usage line and how logged values are written back as overrides."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from gradkit.reporting import reproduce


@pytest.mark.parametrize("argv", [[], ["a", "b"], ["tracking.root=/tmp"]])
def test_usage(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        reproduce.main(argv)
    assert exit_.value.code == 2
    assert "usage: gradkit reproduce RUN_ID" in capsys.readouterr().err


@pytest.mark.parametrize("value", [
    None, True, False, 0, -3, 1e-05, 2.5, float("inf"), "rosenbrock", "it's", "a=b,c",
    "back\\slash", "end\\", "a\\'b", "a\\\\'", [-1.5, 2.5], [], ["x", 1], {"a": 1, "b": [2, 3]},
])
def test_literal_parses_back_to_the_value(value):
    [override] = OverridesParser.create().parse_overrides([f"key={reproduce.literal(value)}"])
    assert override.value() == value
