"""Figures written by the renderer process: the PNG this process would write, errors in one line."""

from __future__ import annotations

import pickle

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from gradkit.plotting import discard, pngs, save
from gradkit.plotting.pngs import FigureError, PNGs

SMALL = {  # each demonstration at a size that runs in a fraction of a second
    "accumulation": {"optimizer_steps": 1},
    "adversarial": {"epochs": 1, "examples": 2, "steps": 2, "cache": False},
    "checkpointing": {"depth": 4, "width": 16, "batch_size": 4, "segments": 2, "repeats": 1},
    "gradient_descent": {"max_iterations": 50},
    "landscape": {"resolution": 20},
    "loss_curvature": {"iterations": 5, "hutchinson_samples": 10},
    "lr_finder": {"num_iter": 20, "skip_start": 2, "skip_end": 2, "validation_steps": 5},
}


def figure_of(slope: float, title: str = "a line") -> Figure:
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, slope])
    ax.set_title(title)
    return fig


def unpicklable(monkeypatch) -> None:
    """Figures that cannot be pickled, so that they are drawn in this process."""
    monkeypatch.setattr(pngs.pickle, "dumps", lambda *args, **kwargs: 1 / 0)


@pytest.mark.parametrize("renderer", [True, False], ids=["renderer", "in-process"])
def test_the_pngs_are_those_this_process_writes(renderer, tmp_path, monkeypatch):
    if not renderer:
        unpicklable(monkeypatch)
    writing = PNGs({"a": figure_of(2), "b": figure_of(3)}, tmp_path / "written", dpi=50)
    writing.wait()
    for name, slope in (("a", 2), ("b", 3)):
        expected = save(figure_of(slope), tmp_path / "here" / f"{name}.png", dpi=50)
        assert (tmp_path / "written" / f"{name}.png").read_bytes() == expected.read_bytes()
    assert not plt.get_fignums()  # the parent closed its copies


@pytest.mark.parametrize("renderer", [True, False], ids=["renderer", "in-process"])
def test_a_figure_that_cannot_be_drawn_is_named_in_one_line(renderer, tmp_path, monkeypatch):
    if not renderer:
        unpicklable(monkeypatch)
    writing = PNGs({"fine": figure_of(1), "bad": figure_of(1, r"$\frac{$")}, tmp_path, dpi=50)
    with pytest.raises(FigureError) as raised:
        writing.wait()
    message = str(raised.value)
    assert message.startswith(f"figure {tmp_path / 'bad'}.png could not be written: ValueError")
    assert "\n" not in message
    assert (tmp_path / "fine.png").exists()
    writing.wait()  # waited for once: nothing left to wait for


def test_a_renderer_that_dies_is_said_in_one_line_and_replaced(tmp_path):
    writing = PNGs({"a": figure_of(2)}, tmp_path / "one", dpi=50)
    pngs._renderer().process.kill()
    with pytest.raises(FigureError, match="the figure renderer ended"):
        writing.wait()

    PNGs({"a": figure_of(2)}, tmp_path / "two", dpi=50).wait()
    assert (tmp_path / "two" / "a.png").is_file()


def test_every_experiment_figure_goes_to_the_renderer(ctx, monkeypatch):
    """No figure of a demonstration falls back to drawing in-process: all of them pickle."""
    from gradkit.core.parameters import builtin_experiments

    for name, cls in builtin_experiments().items():
        experiment = cls(**SMALL.get(name, {}))
        experiment.prepare(ctx)  # the job prepares before it runs (data, model, loss)
        for fig_name, fig in experiment.run(ctx).figures.items():
            assert pickle.dumps(fig), f"{name}: {fig_name}"
            discard(fig)


def test_no_figures_no_child(tmp_path):
    PNGs({}, tmp_path / "none", dpi=50).wait()
    assert not (tmp_path / "none").exists()
