"""Lean log ticks: plain-text labels, minor ticks only where labelled; on colour bars too."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import LogNorm, Normalize, SymLogNorm
from matplotlib.ticker import ScalarFormatter

from gradkit.plotting import LabelledMinorLocator, colorbar, lean_log_ticks, powers_in_view


def shown_labels(lo: float, hi: float, base: float = 10.0, lean: bool = True
                 ) -> tuple[list[str], list[str]]:
    """The non-empty major and minor tick labels inside a log y axis spanning [lo, hi]."""
    fig, ax = plt.subplots()
    ax.set_yscale("log", base=base)
    ax.set_ylim(lo, hi)
    if lean:
        lean_log_ticks(ax.yaxis)
    fig.canvas.draw()

    def inside(ticks):
        return [t.label1.get_text() for t in ticks
                if lo <= t.get_loc() <= hi and t.label1.get_text()]
    return (inside(ax.yaxis.get_major_ticks(len(ax.yaxis.get_majorticklocs()))),
            inside(ax.yaxis.get_minor_ticks(len(ax.yaxis.get_minorticklocs()))))


def plain(mathtext: str) -> str:
    """matplotlib's mathtext log label as the plain text the lean formatter writes."""
    superscripts = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
    text = mathtext.removeprefix("$\\mathdefault{").removesuffix("}$").replace("-", "−")
    number, _, exponent = text.replace("\\times", "×").partition("^{")
    return number + exponent.removesuffix("}").replace("−", "-").translate(superscripts)


def test_decades_read_as_superscripts():
    major, minor = shown_labels(1e-3, 1e2)

    assert major == ["10⁻³", "10⁻²", "10⁻¹", "10⁰", "10¹", "10²"]
    assert minor == []


def test_another_base_keeps_its_base():
    major, _ = shown_labels(1, 64, base=2)

    assert major == ["2⁰", "2¹", "2²", "2³", "2⁴", "2⁵", "2⁶"]


@pytest.mark.parametrize("lo, hi", [(0.3, 0.5), (0.11, 9.0), (2e-3, 7e-3), (1e-3, 1e2),
                                    (1e4, 3e5), (1.5, 2.0), (0.052, 0.068)])
def test_the_same_labels_as_matplotlibs_mathtext_ones(lo, hi):
    lean = shown_labels(lo, hi)
    default = shown_labels(lo, hi, lean=False)

    assert lean[0] == [plain(label) for label in default[0]]
    assert lean[1] == [plain(label) for label in default[1]]  # labelled minors all kept


def test_labelled_minor_ticks_on_a_narrow_range():
    major, minor = shown_labels(0.3, 0.5)

    assert major == []  # no power of ten in view: the minor labels are all there is
    assert minor == ["3×10⁻¹", "4×10⁻¹", "5×10⁻¹"]


def test_minor_ticks_only_where_matplotlib_labels_them():
    locator = LabelledMinorLocator()

    assert len(locator.tick_values(0.3, 0.5)) > 0
    assert len(locator.tick_values(0.11, 9.0)) > 0  # one power of ten in view: labelled
    assert len(locator.tick_values(0.09, 1.5)) == 0  # two: only the powers are labelled
    assert len(locator.tick_values(1e-5, 1e3)) == 0


@pytest.mark.parametrize("lo, hi, count", [(0.3, 0.5, 0), (0.11, 9.0, 1), (0.05, 0.2, 1),
                                           (0.09, 1.5, 2), (9e-6, 1.1e3, 9)])
def test_powers_in_view(lo, hi, count):
    assert powers_in_view(lo, hi) == count


def colorbar_ticks(norm: Normalize, lean: bool = True, ticks: list[float] | None = None
                   ) -> tuple[list[str], int]:
    """A drawn colour bar's major tick labels and how many minor ticks it has."""
    fig, ax = plt.subplots()
    image = ax.imshow(np.linspace(-1, 1, 4).reshape(2, 2), norm=norm)
    bar = colorbar(fig, image, ax) if lean else fig.colorbar(image, ax=ax)
    if ticks is not None:
        bar.set_ticks(ticks)
    fig.canvas.draw()
    axis = bar.long_axis
    labels = [t.label2.get_text() for t in axis.get_major_ticks(len(axis.get_majorticklocs()))]
    return labels, len(axis.get_minorticklocs())


def test_a_log_colorbar_has_the_default_labels_as_plain_text_and_no_unlabelled_minors():
    labels, minors = colorbar_ticks(LogNorm(1e-3, 1e4))
    default, default_minors = colorbar_ticks(LogNorm(1e-3, 1e4), lean=False)

    assert labels == [plain(label) for label in default]
    assert "10⁻³" in labels and "10⁴" in labels
    assert minors == 0 < default_minors


@pytest.mark.parametrize("ticks", [None, [-100.0, -10.0, -1.0, 0.0, 1.0, 10.0, 100.0]])
def test_a_symlog_colorbar_keeps_its_signed_labels(ticks):
    norm = SymLogNorm(linthresh=0.1, vmin=-300, vmax=300)
    labels, _ = colorbar_ticks(norm, ticks=ticks)
    default, _ = colorbar_ticks(SymLogNorm(linthresh=0.1, vmin=-300, vmax=300), lean=False,
                                ticks=ticks)

    assert labels == [plain(label) for label in default]
    assert {"−10²", "0", "10²"} <= set(labels)


def test_a_linear_colorbar_is_left_alone():
    fig, ax = plt.subplots()
    bar = colorbar(fig, ax.imshow(np.eye(2)), ax)

    assert isinstance(bar.formatter, ScalarFormatter)
