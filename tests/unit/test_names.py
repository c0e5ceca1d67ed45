"""Names from users or stores as file names: never a path, never two names on one file."""

from __future__ import annotations

import pytest

from gradkit.core.names import file_name


@pytest.mark.parametrize("name", ["gradient_descent", "fast-descent.v2", "a1b2c3"])
def test_a_plain_name_is_kept(name):
    assert file_name(name) == name


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "a/b", "..", "", "<script>", "x y"])
def test_a_path_or_odd_name_becomes_one_plain_file_name(name):
    safe = file_name(name)
    assert "/" not in safe and not safe.startswith(".") and safe
    assert safe == file_name(name)  # the same name, the same file


def test_names_that_read_alike_stay_apart():
    assert file_name("a/b") != file_name("a_b") != file_name("a b")
