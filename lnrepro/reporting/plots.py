"""The report's PNG plots (matplotlib, Agg backend: no display needed) and the Pareto front."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: (cost, accuracy), lower cost and higher accuracy are better.

    A point is dominated when another has cost <= and accuracy >= with at least one strict; equal points are all
    on the front. Returned in order of increasing cost.
    """
    front = []
    for i, (cost_i, acc_i) in enumerate(points):
        dominated = any(
            cost_j <= cost_i and acc_j >= acc_i and (cost_j < cost_i or acc_j > acc_i)
            for j, (cost_j, acc_j) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def scatter_plot(
    path: Path,
    xs: list[float],
    ys: list[float],
    labels: list[str],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    log_x: bool = False,
    pareto: bool = False,
    published: tuple[list[float], list[float], list[str]] | None = None,
) -> Path:
    """One point per run, labelled; `pareto` draws the front (low x, high y); `published` adds hollow markers."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    ax.scatter(xs, ys, s=36, color="tab:blue", zorder=3, label="measured runs")
    for x, y, label in zip(xs, ys, labels):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if published and published[0]:
        px, py, plabels = published
        ax.scatter(px, py, s=40, facecolors="none", edgecolors="tab:gray", zorder=2, label="published")
        for x, y, label in zip(px, py, plabels):
            ax.annotate(
                f"{label} (published)",
                (x, y),
                textcoords="offset points",
                xytext=(5, -10),
                fontsize=7,
                color="tab:gray",
            )
    if pareto and xs:
        front = pareto_front(list(zip(xs, ys)))
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "-", color="tab:red", lw=1.2, zorder=2)
        ax.scatter(
            [xs[i] for i in front],
            [ys[i] for i in front],
            s=110,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=1.5,
            zorder=4,
            label="Pareto front",
        )
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
