"""The adversarial figures label classes by the dataset's names for them."""

from __future__ import annotations

import torch

from gradkit.experiments.adversarial import Adversarial, Tally

NAMES = ["cat", "dog", "owl"]


def tally_of_one_fooled_and_one_kept() -> Tally:
    """Two 1x2x2 inputs of classes cat and owl: the cat is turned into a dog, the owl kept."""
    tally = Tally(keep=2)
    x, y = torch.zeros(2, 1, 2, 2), torch.tensor([0, 2])
    clean = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    attacked = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    tally.add(x, y, x + 0.1, clean, attacked, targets=None)
    return tally


def test_examples_are_titled_with_class_names():
    tally = tally_of_one_fooled_and_one_kept()
    fig = Adversarial().plot_examples(tally, {"model": "m", "data": "d"}, NAMES)

    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert "true cat\npred cat (0.99)" in titles and "true owl\npred owl (0.99)" in titles
    assert "pred dog (0.99)\nfooled" in titles


def test_the_confusion_matrices_tick_the_class_names():
    tally = tally_of_one_fooled_and_one_kept()
    metrics = {"clean_accuracy": 1.0, "robust_accuracy": 0.5}
    fig = Adversarial().plot_confusion(tally, metrics, NAMES)

    for ax in fig.axes[:2]:
        assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
        assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
