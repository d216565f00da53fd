"""Where each runtime's time goes: the per-layer tables a profile leaves beside a run's metrics.json, in the report.

A run (or profile) directory may hold `layers/<runtime>.csv`: one row per layer or fused kernel as that runtime
timed it, with at least `name`, `kind` (the operator kind: 1x1 conv, depthwise, concat/split/shuffle, element-wise,
...; the profile names them) and `time_ms`, and where the runtime ties a row to shapes `macs`, `bytes`, `intensity`
(FLOP per byte), `gflops`, `gbps`, `bound_ms` (the roofline's least time) and `roofline_share` (bound_ms / time_ms, a
fraction). An empty cell is a figure the runtime could not give. For each run and runtime the report shows:

- the time by operator kind: milliseconds and share of the layer-time sum, with that sum beside the end-to-end
  median (`latency/<runtime>_ms`): per-layer timing costs the runtime some speed, and the gap says how much;
- the `TOP_LAYERS` most expensive layers with their arithmetic, traffic and what share of the roofline they reach;
- a roofline plot (`roofline_<run>_<runtime>.png`): log-log arithmetic intensity against achieved GFLOP/s, one
  point per layer coloured by kind and sized by its share of the time, under the run's measured roofs
  (`roofline/gbps` x intensity, capped at `roofline/gflops`). One plot per run and runtime: layers of two runtimes
  in one plot would hide each other.

The kinds are grouped as the CSV spells them: the vocabulary is the profile's (`lnrepro.profiling.layer_times.KINDS`),
neither repeated nor imported here (the report reads files and imports no torch); a kind has one colour in all of a
report's plots. A file that cannot be used is one warning and one note, as everything else the report skips; a cell
that is not a number is read as empty.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnrepro import schema
from lnrepro.reporting.collect import Run
from lnrepro.reporting.formatting import MISSING, amount, figure
from lnrepro.reporting.plots import _pyplot
from lnrepro.utils.tables import markdown_table

LAYERS_DIR = "layers"
TOP_LAYERS = 10
#: report.files keys (and file names) of the roofline plots: the layer sections show them, not the plot list.
ROOFLINE_PREFIX = "roofline_"
REQUIRED_COLUMNS = ("name", "kind", "time_ms")
FIGURE_COLUMNS = ("macs", "bytes", "time_ms", "intensity", "gflops", "gbps", "bound_ms", "roofline_share")


@dataclass(frozen=True)
class Layer:
    """One row of a layer table; a figure is None where its cell is empty or not a number."""

    name: str
    kind: str
    op: str
    macs: float | None
    bytes: float | None
    time_ms: float | None
    intensity: float | None  # FLOP per byte
    gflops: float | None  # achieved
    gbps: float | None  # achieved
    bound_ms: float | None
    roofline_share: float | None  # bound_ms / time_ms


@dataclass
class LayerTable:
    """One `layers/<runtime>.csv` of one run, with the run's figures it is read beside."""

    run: Run
    runtime: str
    path: Path
    layers: list[Layer]
    run_dir: str = ""  # the run's directory as the report names it (relative to the runs' common folder)
    peaks: tuple[float, float] | None = None  # (GFLOP/s, GB/s) from the run's metrics.json
    plot: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def timed(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.time_ms is not None]

    @property
    def total_ms(self) -> float:
        return sum(layer.time_ms for layer in self.timed)

    def by_kind(self) -> list[tuple[str, float, int]]:
        """(kind, milliseconds, layers) per operator kind, the most expensive first."""
        kinds: dict[str, list[float]] = {}
        for layer in self.timed:
            kinds.setdefault(layer.kind, []).append(layer.time_ms)
        return sorted(((kind, sum(times), len(times)) for kind, times in kinds.items()), key=lambda k: (-k[1], k[0]))

    def most_expensive(self, count: int = TOP_LAYERS) -> list[Layer]:
        return sorted(self.timed, key=lambda layer: -layer.time_ms)[:count]

    def roofline_points(self) -> list[Layer]:
        """The layers a log-log roofline can place: positive intensity and achieved GFLOP/s."""
        return [layer for layer in self.timed if (layer.intensity or 0) > 0 and (layer.gflops or 0) > 0]


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _derived(figures: dict[str, float | None]) -> dict[str, float | None]:
    """Achieved rates and intensity from multiply-adds, bytes and time where the file leaves them empty (FLOPs = 2 x
    multiply-adds, as everywhere in lnrepro): a table with only the required columns and `macs`/`bytes` still plots."""
    macs, moved, ms = figures["macs"], figures["bytes"], figures["time_ms"]
    if figures["intensity"] is None and macs is not None and moved:
        figures["intensity"] = 2 * macs / moved
    if figures["gflops"] is None and macs is not None and ms:
        figures["gflops"] = 2 * macs / ms / 1e6
    if figures["gbps"] is None and moved is not None and ms:
        figures["gbps"] = moved / ms / 1e6
    if figures["roofline_share"] is None and figures["bound_ms"] is not None and ms:
        figures["roofline_share"] = figures["bound_ms"] / ms
    return figures


def read_layers(path: Path) -> list[Layer]:
    """The rows of one `layers/<runtime>.csv`; raises ValueError naming what makes the file unusable (a required
    column missing, no rows) and OSError when it cannot be read."""
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"no column {', '.join(missing)} (a layer table needs {', '.join(REQUIRED_COLUMNS)})")
        layers = [
            Layer(
                name=row["name"] or MISSING,
                kind=row["kind"] or MISSING,
                op=row.get("op") or "",
                **_derived({column: _number(row.get(column)) for column in FIGURE_COLUMNS}),
            )
            for row in reader
        ]
    if not any(layer.time_ms is not None for layer in layers):
        raise ValueError("no row with a time_ms")
    return layers


def _positive(metrics: dict[str, Any], key: str) -> tuple[float | None, str | None]:
    value = metrics.get(key)
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None, f"{key} is {value!r}, not a positive number"
    return float(value), None


def _runtime_order(runtime: str) -> tuple[int, str]:
    return (schema.RUNTIMES.index(runtime) if runtime in schema.RUNTIMES else len(schema.RUNTIMES), runtime)


def load_layer_tables(runs: list[Run]) -> tuple[list[LayerTable], list[str]]:
    """Every `layers/*.csv` beside the runs' metrics.json files, runtimes in `schema.RUNTIMES` order; and one line for
    each file or peak the report cannot use (the report's warnings)."""
    found = [
        (run, sorted((run.path.parent / LAYERS_DIR).glob("*.csv"), key=lambda p: _runtime_order(p.stem)))
        for run in runs
    ]
    found = [(run, paths) for run, paths in found if paths]
    if not found:
        return [], []
    root = os.path.commonpath([str(run.path.parent.resolve()) for run, _ in found])
    tables, problems = [], []
    for run, paths in found:
        gflops, wrong_gflops = _positive(run.metrics, schema.ROOFLINE_GFLOPS)
        gbps, wrong_gbps = _positive(run.metrics, schema.ROOFLINE_GBPS)
        wrong = [f"{run.path}: {line}: its roofline plots have no roofs" for line in (wrong_gflops, wrong_gbps) if line]
        problems.extend(wrong)
        run_dir = os.path.relpath(run.path.parent.resolve(), root)
        for path in paths:
            try:
                layers = read_layers(path)
            except (OSError, ValueError, UnicodeDecodeError, csv.Error) as error:
                problems.append(f"skipping {path}: {error}")
                continue
            peaks = (gflops, gbps) if gflops and gbps else None
            tables.append(LayerTable(run, path.stem, path, layers, run_dir, peaks))
    return tables, problems


# --- Markdown -------------------------------------------------------------------------------------------------------
def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.1f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a node name holding a pipe would split the Markdown row


def reference_latency(table: LayerTable) -> float | None:
    """The end-to-end batch-1 median to set the layer sum beside: `layers/<runtime>_latency_ms`, timed with the
    profiled calls (steadier on shared cores), else the profile's `latency/<runtime>_ms`."""
    for key in (schema.runtime_key(schema.LAYERS_LATENCY, table.runtime), schema.latency_key(table.runtime)):
        value, _ = _positive(table.run.metrics, key)
        if value:
            return value
    return None


def render_table(table: LayerTable) -> list[str]:
    """One run and runtime: the sum against end-to-end, time by kind, the most expensive layers, the plot."""
    total = table.total_ms
    end_to_end = reference_latency(table)
    summary = f"{len(table.timed)} timed layers sum to {figure(total)} ms"
    if end_to_end:
        summary += f"; end-to-end median {figure(end_to_end)} ms (layers / end-to-end: {total / end_to_end:.2f})"
    if table.peaks:
        summary += f"; roofline peaks {figure(table.peaks[0])} GFLOP/s, {figure(table.peaks[1])} GB/s"
    share = lambda ms: ms / total if total else None  # noqa: E731
    kinds = [[_cell(kind), figure(ms), _percent(share(ms)), str(count)] for kind, ms, count in table.by_kind()]
    top = [
        [
            _cell(layer.name),
            _cell(layer.kind),
            figure(layer.time_ms),
            _percent(share(layer.time_ms)),
            amount(layer.macs),
            amount(layer.bytes),
            figure(layer.intensity),
            figure(layer.gflops),
            figure(layer.gbps),
            _percent(layer.roofline_share),
        ]
        for layer in table.most_expensive()
    ]
    top_columns = [("layer", True), ("kind", True), ("ms", False), ("share %", False), ("MACs", False)]
    top_columns += [("bytes", False), ("FLOP/byte", False), ("GFLOP/s", False), ("GB/s", False)]
    top_columns += [("roofline %", False)]
    lines = [
        "",
        f"### {table.run.label}, {table.runtime}" + (f" (`{table.run_dir}`)" if table.run_dir != "." else ""),
        "",
        summary + ".",
        "",
        *markdown_table([("kind", True), ("ms", False), ("share %", False), ("layers", False)], kinds),
        "",
        f"The {len(top)} most expensive layers (roofline %: the roofline's least time over the measured time):",
        "",
        *markdown_table(top_columns, top),
    ]
    if table.plot is not None:
        lines += ["", f"![roofline {table.run.label} {table.runtime}]({table.plot.name})"]
    return lines


def render_kind_summary(tables: list[LayerTable]) -> list[str]:
    """One row per run and runtime: the share of its layer time in each operator kind, so that networks and
    runtimes compare at a glance (where depthwise convs, 1x1 convs and data movement take the time). Kinds are the
    columns, the most expensive over all tables first."""
    totals: dict[str, float] = {}
    for table in tables:
        for kind, ms, _count in table.by_kind():
            totals[kind] = totals.get(kind, 0.0) + (ms / table.total_ms if table.total_ms else 0.0)
    kinds = sorted(totals, key=lambda kind: (-totals[kind], kind))
    rows = []
    for table in tables:
        end_to_end = reference_latency(table)
        shares = {kind: ms / table.total_ms for kind, ms, _count in table.by_kind()} if table.total_ms else {}
        rows.append(
            [_cell(table.run.label), table.runtime, figure(table.total_ms), figure(end_to_end)]
            + [_percent(shares.get(kind, 0.0)) for kind in kinds]
        )
    columns = [("network", True), ("runtime", True), ("layers ms", False), ("end-to-end ms", False)]
    columns += [(f"{_cell(kind)} %", False) for kind in kinds]
    return [
        "",
        "Share of each run's layer time by operator kind (% of the layers' sum; end-to-end: the batch-1 median):",
        "",
        *markdown_table(columns, rows),
    ]


def render_layer_sections(tables: list[LayerTable]) -> list[str]:
    """The report's per-layer part: a summary of every run and runtime by operator kind, then one section per run
    and runtime, or nothing without layer tables."""
    if not tables:
        return []
    lines = [
        "",
        "## Where the time goes, per layer",
        "",
        "Per-layer times as each runtime reports them (`layers/<runtime>.csv` of each run): time by operator kind "
        "(share of the layer-time sum) and the most expensive layers. FLOP/byte: arithmetic intensity (FLOPs = 2 x "
        "multiply-adds); GFLOP/s and GB/s: achieved; '-': a figure the runtime could not tie to the layer.",
        *render_kind_summary(tables),
    ]
    for table in tables:
        lines += render_table(table)
    return lines


# --- the roofline plot ------------------------------------------------------------------------------------------------
def roof(gflops: float, gbps: float, low: float, high: float) -> tuple[list[float], list[float]]:
    """The roofline from `low` to `high` FLOP/byte: the memory slope (GB/s x intensity = GFLOP/s) up to the ridge,
    the compute ceiling after it."""
    ridge = gflops / gbps
    xs = [low] + ([ridge] if low < ridge < high else []) + [high]
    return xs, [min(gbps * x, gflops) for x in xs]


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def kind_colours(tables: list[LayerTable]) -> dict[str, Any]:
    """One colour per operator kind over all the report's tables, so that a kind looks the same in every plot."""
    kinds = sorted({layer.kind for table in tables for layer in table.layers})
    palette = _pyplot().get_cmap("tab20" if len(kinds) > 10 else "tab10")
    return {kind: palette(index % palette.N) for index, kind in enumerate(kinds)}


def roofline_plot(path: Path, table: LayerTable, colours: dict[str, Any] | None = None) -> Path:
    """One point per layer (intensity, achieved GFLOP/s), coloured by kind (`kind_colours`), sized by its share of
    the time."""
    plt = _pyplot()
    colours = colours or kind_colours([table])
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    points = table.roofline_points()
    total = table.total_ms or 1.0
    for kind, _, _ in table.by_kind():  # the legend in order of time
        chosen = [layer for layer in points if layer.kind == kind]
        if chosen:
            ax.scatter(
                [layer.intensity for layer in chosen],
                [layer.gflops for layer in chosen],
                s=[12 + 400 * layer.time_ms / total for layer in chosen],
                color=colours[kind],
                alpha=0.75,
                edgecolors="black",
                linewidths=0.4,
                label=kind,
                zorder=3,
            )
    xs = [layer.intensity for layer in points]
    if table.peaks:
        gflops, gbps = table.peaks
        low = min(xs + [gflops / gbps]) / 4
        high = max(xs + [gflops / gbps]) * 4
        roof_x, roof_y = roof(gflops, gbps, low, high)
        ax.plot(roof_x, roof_y, "-", color="black", lw=1.5, zorder=2)
        ax.annotate(
            f"{figure(gflops)} GFLOP/s",
            (high, gflops),
            xytext=(-4, 4),
            textcoords="offset points",
            ha="right",
            fontsize=8,
        )
        middle = math.sqrt(low * gflops / gbps)  # halfway up the memory slope, on log axes
        ax.annotate(
            f"{figure(gbps)} GB/s",
            (middle, gbps * middle),
            xytext=(-6, 6),
            textcoords="offset points",
            ha="right",
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved GFLOP/s")
    placed = {id(layer) for layer in points}
    unplaced = [layer for layer in table.timed if id(layer) not in placed]
    title = f"{table.run.label}, {table.runtime}: {len(points)} of {len(table.timed)} layers placed"
    if unplaced:  # data movement has no FLOPs to place on a log axis, yet it is time the network spends
        title += (
            f"\nnot placed (no FLOPs, or no shapes): {len(unplaced)} layers, "
            f"{figure(sum(layer.time_ms for layer in unplaced))} ms"
        )
    if not table.peaks:
        title += "\nno roofs: metrics.json has no usable roofline/gflops and roofline/gbps"
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if points:
        ax.legend(fontsize=7, loc="best", title="kind (size: share of time)", title_fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def make_roofline_plots(tables: list[LayerTable], out_dir: Path) -> dict[str, Path]:
    """One roofline plot per run and runtime in `out_dir`, recorded in each table; report.files' entries for them.
    Runs of one label (the seeds of a recipe) are told apart by their directory."""
    labels: dict[str, set[str]] = {}
    for table in tables:
        labels.setdefault(table.run.label, set()).add(table.run_dir)
    files: dict[str, Path] = {}
    colours = kind_colours(tables)
    for table in tables:
        name = table.run.label + ("" if len(labels[table.run.label]) == 1 else f"_{table.run_dir}")
        key = f"{ROOFLINE_PREFIX}{_file_stem(name)}_{_file_stem(table.runtime)}"
        while key in files:  # two directories that read the same once cleaned
            key += "_"
        table.plot = files[key] = roofline_plot(out_dir / f"{key}.png", table, colours)
    return files
