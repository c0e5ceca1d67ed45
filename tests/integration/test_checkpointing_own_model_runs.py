"""Gradient checkpointing on the example project's own model: its conv net is no chain of
blocks (a functional ReLU and a mean pool between its modules), so it is refused."""

from __future__ import annotations

from conftest import runs_of


def test_small_convnet_is_refused_in_one_line_before_any_run(cli, store, user_project):
    code, err = cli("--config-dir", str(user_project), "experiment=checkpointing",
                    "model=small_convnet", "data=stripes")

    assert code != 0
    [line] = [line for line in err.splitlines() if line.startswith("gradkit: ")]
    assert line.startswith("gradkit: model=small_convnet is not an nn.Sequential or a list of "
                           "blocks; ")
    assert "SmallConvNet" in line
    assert runs_of(store, "checkpointing") == []
