"""Shared matplotlib helpers: the Agg backend, one style, saving and closing."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.cm import ScalarMappable
from matplotlib.colorbar import Colorbar
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, LogLocator

logging.getLogger("matplotlib").setLevel(logging.WARNING)  # hydra.verbose=true: no font logs

STYLE = {
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.titleweight": "bold",
    "figure.titlesize": 14,
    "font.size": 10,
    # A fixed title position: left at None, every axes lays out its tick labels once more
    # to find room for its title above them. No figure here puts tick labels on top.
    "axes.titley": 1.0,
    # glyph hinting costs ~0.3 ms a text (~10% of a six-panel figure); at dpi 100 unhinted
    # text reads the same
    "text.hinting": "no_hinting",
}
plt.rcParams.update(STYLE)


def figure(title: str, nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (7, 5),
           layout: str | None = "constrained"):
    """A titled figure with a grid of axes (a single Axes when 1x1).

    Constrained layout costs ~0.1 s an axes at draw time; figures drawn once per job in
    large sweeps pass `layout=None` and set their margins with `subplots_adjust`.
    """
    fig, axes = plt.subplots(nrows, ncols, figsize=size, layout=layout)
    fig.suptitle(title)
    return fig, axes


def save(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Write `fig` as PNG and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, pil_kwargs={"compress_level": 1})  # fast zlib; ~1.5x larger
    plt.close(fig)
    return path


def discard(fig: Figure) -> None:
    """Close `fig` without writing it."""
    plt.close(fig)


SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


class PlainLogFormatter(LogFormatter):
    """Log tick labels as plain text with unicode superscripts (10⁻², 2×10⁻³): the same
    labels as matplotlib's default, without parsing mathtext for each."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        label = super().__call__(x, pos)  # of |x|: signed for a symlog axis's negative side
        return self.fix_minus(f"-{label}") if x < 0 and label else label

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        base = self._base
        power = math.log(x, base)
        exponent = round(power) if abs(power - round(power)) < 1e-9 else math.floor(power)
        coefficient = f"{round(x / base**exponent, 9):g}"  # 2, or 1.9 on a very narrow view
        mantissa = f"{coefficient}×" if coefficient != "1" else ""
        return f"{mantissa}{base:g}{str(exponent).translate(SUPERSCRIPTS)}"


class LabelledMinorLocator(LogLocator):
    """Minor log ticks only where they carry labels: when the view holds at most one power
    of the base (the rule of matplotlib's log formatters). Elsewhere none, which spares
    dozens of unlabelled Tick objects an axis."""

    def __init__(self, base: float = 10.0):
        super().__init__(base, subs="auto")

    def tick_values(self, vmin: float, vmax: float):
        vmin, vmax = sorted((vmin, vmax))
        if vmin > 0 and powers_in_view(vmin, vmax, self._base) > 1:
            return []
        return super().tick_values(vmin, vmax)


def powers_in_view(vmin: float, vmax: float, base: float = 10.0) -> int:
    """How many integer powers of `base` lie in [vmin, vmax] (0 < vmin <= vmax), counted
    as matplotlib's log formatters count them."""
    return math.floor(math.log(vmax, base)) - math.floor(math.nextafter(math.log(vmin, base),
                                                                         -math.inf))


def lean_log_ticks(axis: Axis) -> None:
    """Cheaper ticks for a log-scale `axis` with the same labels: plain-text superscripts,
    minor ticks only where they are labelled. Call after setting the scale."""
    base = axis.get_transform().base
    axis.set_major_formatter(PlainLogFormatter(base, labelOnlyBase=True))
    axis.set_minor_locator(LabelledMinorLocator(base))
    axis.set_minor_formatter(PlainLogFormatter(base))


def colorbar(fig: Figure, mappable: ScalarMappable, ax: Axes, **kwargs: Any) -> Colorbar:
    """`fig.colorbar` with lean ticks on a log or symlog scale: plain-text labels (−10³, 0,
    10⁻²) and, on a log scale, minor ticks only where they are labelled."""
    bar = fig.colorbar(mappable, ax=ax, **kwargs)
    scale = bar.long_axis.get_scale()
    if scale in ("log", "symlog"):
        base = bar.long_axis.get_transform().base
        # set through the colour bar, which puts back its own locators and formatter whenever
        # it redraws its ticks (set_ticks, a new norm)
        bar.formatter = PlainLogFormatter(base, labelOnlyBase=scale == "log")
        if scale == "log":
            bar.minorlocator = LabelledMinorLocator(base)
            bar.minorformatter = PlainLogFormatter(base)
    return bar


def objective_by_job(jobs: list[dict[str, Any]]) -> Figure:
    """Each job's objective as a horizontal bar, failed jobs marked."""
    fig, ax = figure(f"{jobs[0]['experiment']}: objective by job",
                     size=(8, 2.5 + 0.35 * len(jobs)))
    labels = [f"#{job['job']} {job['overrides']}" for job in jobs]
    values = [job["metrics"].get("objective", 0.0) for job in jobs]
    colors = ["tab:blue" if job["status"] == "COMPLETED" else "tab:red" for job in jobs]
    bars = ax.barh(labels, values, color=colors)
    ax.bar_label(bars, [f"{v:.4g}" if job["status"] == "COMPLETED" else job["status"].lower()
                        for v, job in zip(values, jobs, strict=True)], padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("objective")
    ax.set_ylabel("job")
    return fig
