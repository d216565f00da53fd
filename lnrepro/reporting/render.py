"""`make_report(dirs)`: runs -> report.md, report.csv and PNG plots, in the ghost_vs_dwpw table's column order.

Columns (the ghost_vs_dwpw table's order): model (row name), stem, params, FLOPs, train s/epoch, val s, ms/image,
memory, top-1. Sources in metrics.json: `params` (`params_conv` with the ghost_vs_dwpw table), `flops`
(`flops_conv`; FLOPs = 2 x multiply-adds), `train/epoch_s`, `val/epoch_s`, `latency/eager_ms` (batch-1 median),
`memory/peak_mib`, `test/acc` (`val/acc_best` when a run has no test, marked with a dagger). A missing value is "-".

What the report could not use is one warning on stderr and one note in report.md each: a file that cannot be read, a
key holding a value of the wrong type (read as missing: `collect.FIGURE_KEYS`), copies of one run (counted once) and
a run whose top-1 comes from another split than its row's (left out of the row's mean).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnrepro import schema
from lnrepro.reporting.collect import Run, load_runs, warn
from lnrepro.reporting.formatting import MISSING, format_value, significant
from lnrepro.reporting.layers import (
    ROOFLINE_PREFIX,
    LayerTable,
    load_layer_tables,
    make_roofline_plots,
    render_layer_sections,
)
from lnrepro.reporting.plots import scatter_plot
from lnrepro.reporting.reference import Reference, load_reference
from lnrepro.reporting.seeds import (
    DEFAULT_TOLERANCE,
    SeedStats,
    compare,
    drop_copies,
    group_by_recipe,
    merge_seeds,
    mixed_split_notes,
)
from lnrepro.utils.files import atomic_write_text
from lnrepro.utils.tables import markdown_table

# (csv column, Markdown header) in the ghost_vs_dwpw table's order
COLUMNS = [
    ("model", "model"),
    ("stem", "stem"),
    ("params", "params"),
    ("flops", "FLOPs"),
    ("train_s_per_epoch", "train s/epoch"),
    ("val_s", "val s"),
    ("infer_ms_per_image", "ms/image"),
    ("memory_mib", "memory"),
    ("top1", "top-1 %"),
]
FIGURES = [name for name, _ in COLUMNS[2:]]
# after the main columns in report.csv: how and where each figure was measured
# (csv column, metrics.json key)
EXTRA = (
    [
        (key, key)
        for key in (
            schema.LATENCY_P90_MS,
            schema.INFER_IMGS_PER_S,
            schema.TRAIN_IMGS_PER_S,
            schema.MEMORY_INFER_PEAK_MIB,
        )
    ]
    + [
        ("params_total", schema.PARAMS),
        ("params_conv", schema.PARAMS_CONV),
        ("macs", schema.MACS),
        ("flops_total", schema.FLOPS),
        ("flops_conv", schema.FLOPS_CONV),
    ]
    + [
        (key, key)
        for key in (
            schema.MAC_BYTES,
            schema.WIDTH,
            schema.CONV,
            schema.GROUPS,
            schema.DATA,
            schema.EPOCHS,
            *schema.CONTEXT_KEYS,
            schema.SCHEMA,
        )
    ]
)
PLOTS = {
    "top1_vs_deployed_latency": ("deployed_ms_per_image", "top1"),
    "flops_vs_deployed_latency": ("flops", "deployed_ms_per_image"),
    "top1_vs_flops": ("flops", "top1"),
    "top1_vs_latency": ("infer_ms_per_image", "top1"),
    "flops_vs_latency": ("flops", "infer_ms_per_image"),
}
# The speed table under the main one, where runs carry speed figures (training runs at the end of fit, lnrepro-profile
# runs always): (Markdown header, metrics.json key(s), format).
SPEED_COLUMNS = [
    ("latency ms (p90)", (schema.LATENCY_MS, schema.LATENCY_P90_MS), "latency"),
    ("infer img/s", (schema.INFER_IMGS_PER_S,), "rate"),
    ("train img/s", (schema.TRAIN_IMGS_PER_S,), "rate"),
    ("infer memory", (schema.MEMORY_INFER_PEAK_MIB,), "memory"),
    ("train memory", (schema.MEMORY_PEAK_MIB,), "memory"),
    ("batch", (schema.BATCH_SIZE,), "plain"),
    ("input", (schema.INPUT_SIZE,), "plain"),
    ("threads", (schema.THREADS,), "plain"),
]


@dataclass
class ReportRow:
    run: Run  # for several seeds of one recipe: the merged run (`seeds.merge_seeds`)
    reference: dict[str, float | None] | None = None
    reference_label: str | None = None
    seed_stats: SeedStats | None = None
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def verdict(self) -> str | None:
        stats = self.seed_stats
        return stats.verdict((self.reference or {}).get("top1"), self.tolerance) if stats else None

    def seed_stats_cells(self) -> dict[str, Any]:
        """The columns of top-1 over seeds, in report.md's and report.csv's names."""
        stats = self.seed_stats or SeedStats(0, None, None, None)
        rounded = lambda value: None if value is None else round(value, 3)  # noqa: E731
        return {
            "n_seeds": stats.n_seeds,
            "top1_mean": rounded(stats.top1_mean),
            "top1_std": rounded(stats.top1_std),
            "top1_ci95": rounded(stats.top1_ci95),
            "top1_int8_mean": rounded(stats.top1_int8_mean),
            "verdict": self.verdict,
        }

    def csv_record(self, with_reference: bool, root: Path) -> dict[str, Any]:
        record: dict[str, Any] = {"model": self.run.name, "stem": self.run.stem or ""}
        record.update(
            {name: "" if self.run.values[name] is None else round(self.run.values[name], 6) for name in FIGURES}
        )
        if with_reference:
            record["ref_model"] = self.reference_label or ""
            for name in FIGURES:
                value = (self.reference or {}).get(name)
                record[f"ref_{name}"] = "" if value is None else value
        record["variant"] = self.run.variant  # after the main and ref_ columns: the tables' order comes first
        record.update({key: "" if value is None else value for key, value in self.seed_stats_cells().items()})
        record["top1_split"] = self.run.top1_source or ""
        for column, key in EXTRA:
            value = self.run.metrics.get(key)
            record[column] = "" if value is None else value
        record["run_dir"] = _relative(self.run.path.parent, root)
        return record


@dataclass
class Report:
    rows: list[ReportRow]
    reference: Reference | None
    out_dir: Path
    markdown: str = ""
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    run_count: int = 0  # runs in the rows, copies counted once
    layer_tables: list[LayerTable] = field(default_factory=list)  # layers/<runtime>.csv of each run (layers.py)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve())) or "."
    except ValueError:
        return str(path)


def _common_root(runs: list[Run]) -> Path:
    return Path(os.path.commonpath([str(run.path.parent) for run in runs]))


def build_rows(
    groups: list[list[Run]], reference: Reference | None, tolerance: float = DEFAULT_TOLERANCE
) -> tuple[list[ReportRow], list[str]]:
    """One row per recipe (`seeds.group_by_recipe`'s groups: runs that differ only in seed are one row,
    `seeds.merge_seeds`), in reference order (matched rows first), then the rest in path order; notes on what did
    not match."""
    notes: list[str] = []
    merged = [merge_seeds(group) for group in groups]
    if reference is None:
        return [ReportRow(run, seed_stats=stats, tolerance=tolerance) for run, stats in merged], notes
    matched, unmatched, used = [], [], set()
    for run, stats in merged:
        index = reference.match(run)
        if index is None:
            unmatched.append(ReportRow(run, seed_stats=stats, tolerance=tolerance))
        else:
            used.add(index)
            row = reference.rows[index]
            matched.append((index, ReportRow(run, reference.values(row), reference.label(row), stats, tolerance)))
    rows = [row for _, row in sorted(matched, key=lambda item: item[0])] + unmatched
    if unmatched:
        notes.append(
            f"no row of {reference.path.name} for: {', '.join(r.run.label for r in unmatched)} "
            f"(matching: {reference.how})"
        )
    if reference.kind == "ghost_vs_dwpw":  # a table of exactly the runs to make: name those still missing
        missing = [r["model"] for i, r in enumerate(reference.rows) if i not in used]
        if missing:
            notes.append(f"rows of {reference.path.name} with no run: {', '.join(missing)}")
    return rows, notes


def latency_cell(median: float, p90: float | None) -> str:
    """`1.23 (1.5)`: median latency and, where measured, its 90th percentile."""
    return significant(median) + (f" ({significant(p90)})" if p90 is not None else "")


def speed_cell(metrics: dict[str, Any], keys: tuple[str, ...], kind: str) -> str:
    values = [metrics.get(key) for key in keys]
    if values[0] is None:
        return MISSING
    if kind == "latency":
        return latency_cell(values[0], values[1])
    if kind == "memory":
        return format_value("memory_mib", values[0])
    if kind == "rate":
        return significant(values[0])
    return "x".join(map(str, values[0])) if isinstance(values[0], list) else str(values[0])


def runtime_cell(metrics: dict[str, Any], runtime: str) -> str:
    """Median latency (p90), `*` when the measurement was contended, `failed` when the runtime failed."""
    value = metrics.get(schema.latency_key(runtime))
    if value is None:
        return "failed" if metrics.get(schema.error_key(runtime)) else MISSING
    contended = "*" if metrics.get(schema.contended_key(runtime)) else ""
    return latency_cell(value, metrics.get(schema.latency_p90_key(runtime))) + contended


def render_runtime_table(rows: list[ReportRow]) -> list[str]:
    """Batch-1 latency in each runtime side by side, the best runtime's speed-up over eager, and int8's top-1 drop
    (where the run measured test accuracy in each runtime)."""
    runtimes = [
        r for r in schema.RUNTIMES if any(row.run.metrics.get(schema.latency_key(r)) is not None for row in rows)
    ]
    predicted = [  # lnrepro-report --predict, or lnrepro-profile profile.predict=true
        r
        for r in schema.RUNTIMES
        if any(row.run.metrics.get(schema.predicted_latency_key(r)) is not None for row in rows)
    ]
    if not [r for r in runtimes if r != "eager"] and not predicted:
        return []
    cells = []
    for row in rows:
        metrics = row.run.metrics
        measured = {r: metrics.get(schema.latency_key(r)) for r in runtimes}
        measured = {r: v for r, v in measured.items() if v is not None}
        eager = measured.get("eager")
        best = min(measured, key=measured.get) if measured else None
        speedup = (
            f"{best} x{eager / measured[best]:.1f}"
            if best and eager and best != "eager"
            else "eager"
            if best == "eager"
            else MISSING
        )
        top1, int8 = metrics.get(schema.TEST_ACC), metrics.get(schema.accuracy_key("onnxruntime_int8"))
        stats = row.seed_stats
        if stats and stats.n_seeds > 1 and stats.top1_int8_mean is not None:  # mean over the seeds
            top1, int8 = stats.top1_mean / 100, stats.top1_int8_mean / 100
        drop = MISSING if top1 is None or int8 is None else f"{100 * (float(top1) - float(int8)):+.2f}"
        guesses = [metrics.get(schema.predicted_latency_key(r)) for r in predicted]
        guesses = [MISSING if value is None else significant(value) for value in guesses]
        cells.append([row.run.label] + [runtime_cell(metrics, r) for r in runtimes] + guesses + [speedup, drop])
    columns = (
        [("model", True)]
        + [(f"{r} ms (p90)", False) for r in runtimes]
        + [(f"{r} predicted ms", False) for r in predicted]
        + [("fastest, vs eager", False), ("int8 top-1 drop (points)", False)]
    )
    cpus = sorted({str(row.run.metrics.get("cpu/model")) for row in rows if row.run.metrics.get("cpu/model")})
    return [
        "",
        "Latency per runtime (batch 1, median and p90; `*`: contended, the machine was busy"
        + ("; predicted: the latency predictor fitted on the reporting machine" if predicted else "")
        + (f"; CPU: {', '.join(cpus)}" if cpus else "")
        + "):",
        "",
        *markdown_table(columns, cells),
    ]


def render_speed_table(rows: list[ReportRow]) -> list[str]:
    """Latency, throughput and memory of each run, where any run has them (the measurement context beside)."""
    if not any(row.run.metrics.get(keys[0]) is not None for row in rows for _, keys, _ in SPEED_COLUMNS[:5]):
        return []
    columns = [("model", True)] + [(header, False) for header, _, _ in SPEED_COLUMNS]
    cells = [
        [row.run.label] + [speed_cell(row.run.metrics, keys, kind) for _, keys, kind in SPEED_COLUMNS] for row in rows
    ]
    return [
        "",
        "Speed on the measuring device (latency at batch 1; throughput and memory at `batch`):",
        "",
        *markdown_table(columns, cells),
    ]


SEED_STATS_COLUMNS = ["n_seeds", "top1_mean", "top1_std", "top1_ci95", "top1_int8_mean", "verdict"]


def render_top1_over_seeds(rows: list[ReportRow]) -> list[str]:
    """Top-1 over random seeds, where a row has several seeds or a published top-1 to be judged against."""
    shown = [
        row for row in rows if row.seed_stats and row.seed_stats.n_seeds and (row.seed_stats.n_seeds > 1 or row.verdict)
    ]
    if not shown:
        return []
    columns = (
        [("model", True), ("seeds", True)] + [(name, False) for name in SEED_STATS_COLUMNS] + [("published", False)]
    )
    cells = []
    for row in shown:
        values = row.seed_stats_cells()
        published = (row.reference or {}).get("top1")
        cells.append(
            [row.run.label, ",".join(map(str, row.seed_stats.seeds))]
            + [
                MISSING
                if values[name] is None
                else f"{values[name]:g}" + ("†" if name == "top1_mean" and row.run.top1_source == "val" else "")
                if isinstance(values[name], float)
                else str(values[name])
                for name in SEED_STATS_COLUMNS
            ]
            + [MISSING if published is None else f"{published:g}"]
        )
    return [
        "",
        f"Top-1 (%) over seeds (runs equal but for the seed; one split a row, `†`: validation; 95% interval: "
        f"Student t; top1_int8_mean: the same weights in ONNX Runtime int8; verdict: |mean - published| <= "
        f"max(ci95, {shown[0].tolerance:g}) is `reproduced`):",
        "",
        *markdown_table(columns, cells),
    ]


def render_comparisons(rows: list[ReportRow]) -> list[str]:
    """Every pair of rows of one model, width and data with several seeds each: an ablation's question, "does
    this choice change top-1?", answered with the difference of the means and whether the intervals overlap."""
    seeded = [row for row in rows if row.seed_stats and row.seed_stats.n_seeds > 1]
    cells = []
    for index, a in enumerate(seeded):
        for b in seeded[index + 1 :]:
            same = lambda run: (run.model, run.width, run.metrics.get(schema.DATA))  # noqa: E731
            if same(a.run) != same(b.run):
                continue
            result = compare(a.seed_stats, b.seed_stats)
            cells.append(
                [
                    a.run.label,
                    b.run.label,
                    f"{a.seed_stats.top1_mean:.2f} ± {a.seed_stats.top1_ci95:.2f}",
                    f"{b.seed_stats.top1_mean:.2f} ± {b.seed_stats.top1_ci95:.2f}",
                    f"{result.difference:+.2f}",
                    f"{result.p_value:.3g}",
                    result.verdict,
                ]
            )
    if not cells:
        return []
    columns = [("a", True), ("b", True), ("top-1 a (95%)", False), ("top-1 b (95%)", False)]
    columns += [("a - b", False), ("Welch p", False), ("verdict", True)]
    return [
        "",
        "Rows of one model that differ in one choice (mean top-1 ± 95% interval over seeds; verdict: whether the "
        "two intervals overlap; Welch p: two-sided t-test with unequal variances):",
        "",
        *markdown_table(columns, cells),
    ]


def render_markdown(report: Report, sources: list[str]) -> str:
    with_reference = report.reference is not None
    lines = ["# lnrepro report", ""]
    runs = report.run_count
    lines.append(
        f"{runs} run(s) from {', '.join(sources)}"
        + (f", {len(report.rows)} rows (seeds averaged)." if runs != len(report.rows) else ".")
    )
    if with_reference:
        lines.append(
            f"Cells read `measured / published`; published figures from `{report.reference.path.name}`, "
            f"matched by {report.reference.how}."
        )
    lines.append(
        "FLOPs = 2 x multiply-adds. ms/image: batch-1 median latency. memory: peak memory of the run. "
        "top-1: test split (`†`: validation, the run has no test; `‡`: written before true top-1, a mean of "
        "per-class accuracies)."
    )
    devices = sorted({str(r.run.metrics.get(schema.DEVICE)) for r in report.rows if r.run.metrics.get(schema.DEVICE)})
    if devices:
        lines.append(f"Measured on: {', '.join(devices)}.")
    lines.append("")
    table = []
    for row in report.rows:
        cells = [row.run.label, row.run.stem or MISSING]
        for name in FIGURES:
            cell = format_value(name, row.run.values[name])
            if name == "top1" and row.run.top1_source == "val":
                cell += "†"
            if (
                name == "top1"
                and row.run.values["top1"] is not None
                and row.run.metrics.get(schema.SCHEMA, 0) < schema.TRUE_TOP1_SINCE
            ):
                cell += "‡"
            if with_reference:
                cell += " / " + (format_value(name, row.reference.get(name)) if row.reference else MISSING)
            cells.append(cell)
        table.append(cells)
    lines.extend(markdown_table([(header, name in ("model", "stem")) for name, header in COLUMNS], table))
    lines.extend(render_top1_over_seeds(report.rows))
    lines.extend(render_comparisons(report.rows))
    lines.extend(render_runtime_table(report.rows))
    lines.extend(render_speed_table(report.rows))
    if report.notes:
        lines.append("")
        lines.extend(f"- {note}" for note in report.notes)
    plots = [
        (name, path)
        for name, path in report.files.items()
        if path.suffix == ".png" and not name.startswith(ROOFLINE_PREFIX)  # shown in their layer sections
    ]
    if plots:
        lines.append("")
        for name, path in plots:
            lines.append(f"![{name.replace('_', ' ')}]({path.name})")
    lines.extend(render_layer_sections(report.layer_tables))  # the details, after the overview
    return "\n".join(lines) + "\n"


def write_csv(report: Report, path: Path) -> Path:
    with_reference = report.reference is not None
    root = _common_root([row.run for row in report.rows])
    records = [row.csv_record(with_reference, root) for row in report.rows]
    fieldnames = list(records[0]) if records else [name for name, _ in COLUMNS]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(records)
    return atomic_write_text(path, text.getvalue())


def make_plots(report: Report) -> None:
    labels = {
        "flops": "FLOPs (2 x multiply-adds)",
        "top1": "top-1 accuracy (%)",
        "infer_ms_per_image": "eager PyTorch latency, batch 1 (ms/image)",
        "deployed_ms_per_image": "ONNX Runtime latency, batch 1 (ms/image)",
    }
    for name, (x_key, y_key) in PLOTS.items():
        points = [(r.run.values[x_key], r.run.values[y_key], r.run.label) for r in report.rows]
        points = [p for p in points if p[0] is not None and p[1] is not None]
        if not points:
            if "deployed" not in name:  # runs measured without ONNX Runtime simply have no deployed plots
                report.notes.append(f"plot {name} skipped: no run has both {x_key} and {y_key}")
            continue
        published = None
        # published points only where the x axis does not depend on the hardware (FLOPs)
        if report.reference is not None and name == "top1_vs_flops":
            seen = {}
            for r in report.rows:
                if r.reference and r.reference.get(x_key) is not None and r.reference.get(y_key) is not None:
                    seen[r.reference_label] = (r.reference[x_key], r.reference[y_key])
            if seen:
                published = ([v[0] for v in seen.values()], [v[1] for v in seen.values()], list(seen))
        title = {
            "top1_vs_flops": "Top-1 vs FLOPs",
            "top1_vs_latency": "Top-1 vs measured latency (eager)",
            "top1_vs_deployed_latency": "Top-1 vs deployed latency (ONNX Runtime fp32)",
            "flops_vs_deployed_latency": "FLOPs vs deployed latency (ONNX Runtime fp32)",
            "flops_vs_latency": "FLOPs vs measured latency",
        }[name]
        report.files[name] = scatter_plot(
            report.out_dir / f"{name}.png",
            [p[0] for p in points],
            [p[1] for p in points],
            [p[2] for p in points],
            xlabel=labels[x_key],
            ylabel=labels[y_key],
            title=title,
            log_x=x_key == "flops",
            pareto=name in ("top1_vs_latency", "top1_vs_deployed_latency"),
            published=published,
        )
    report.files.update(make_roofline_plots(report.layer_tables, report.out_dir))


def make_report(
    paths: list[str | Path],
    reference: str | Path | None = None,
    out_dir: str | Path | None = None,
    plots: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    predict: list[str] | None = None,
    predict_threads: int = 1,
) -> Report:
    """Gather every metrics.json under `paths`; write report.md, report.csv and the plots into `out_dir`.
    Runs that differ only in seed are one row (mean top-1 with its 95% interval and, against a published top-1,
    a verdict within `tolerance` points: `lnrepro.reporting.seeds`).

    `out_dir` defaults to the directory given when there is one, else ./report. Raises `ReportError` (one line)
    when no metrics.json is found. `predict`: runtimes whose latency is predicted for runs never timed in them
    (`lnrepro.reporting.predicted`) by the predictors fitted at `predict_threads` threads (a missing one is refused in
    one line). What could not be used (a file, a
    key of the wrong type, a copy) is one warning on stderr and one note each.
    """
    ref = load_reference(reference) if reference else None
    runs, problems = load_runs(list(paths), conv_only=bool(ref and ref.conv_only))
    runs, copies = drop_copies(runs)
    groups = group_by_recipe(runs)
    layer_tables, layer_problems = load_layer_tables(runs)
    problems += copies + mixed_split_notes(groups) + layer_problems
    if predict:
        from lnrepro.reporting.predicted import fill_predictions

        problems += fill_predictions(runs, predict, predict_threads)
    warn(problems)
    if out_dir is None:
        out_dir = Path(paths[0]) if len(paths) == 1 and Path(paths[0]).is_dir() else Path("report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, notes = build_rows(groups, ref, tolerance)
    report = Report(
        rows=rows, reference=ref, out_dir=out, notes=problems + notes, run_count=len(runs), layer_tables=layer_tables
    )
    if ref is not None and ref.conv_only and any(r.run.values["params"] is None for r in rows):
        report.notes.append(
            "params/FLOPs need `params_conv`/`flops_conv` in metrics.json (the ghost_vs_dwpw table counts "
            "Conv2d layers only); runs without them show '-'"
        )
    if plots:
        make_plots(report)
    report.files["csv"] = write_csv(report, out / "report.csv")
    report.markdown = render_markdown(report, [str(p) for p in paths])
    report.files["markdown"] = out / "report.md"
    atomic_write_text(report.files["markdown"], report.markdown)
    return report


def seed_records(rows: list[ReportRow]) -> list[dict[str, Any]]:
    """Top-1 over seeds of every row that has a top-1, as numbers (report.csv's seed columns, the interval's ends,
    the published top-1 and the verdict), with what a dashboard groups by (family, width, conv, data)."""
    records = []
    for row in rows:
        stats = row.seed_stats
        if not stats or not stats.n_seeds:
            continue
        cells = row.seed_stats_cells()
        interval = stats.top1_ci95
        records.append(
            {
                "model": row.run.label,
                "family": row.run.model,
                "width": row.run.width,
                "conv": row.run.conv,
                "data": row.run.metrics.get(schema.DATA),
                "seeds": ",".join(map(str, stats.seeds)),
                **cells,
                "top1_low": None if interval is None else round(stats.top1_mean - interval, 3),
                "top1_high": None if interval is None else round(stats.top1_mean + interval, 3),
                "published_top1": (row.reference or {}).get("top1"),
                "split": row.run.top1_source,
            }
        )
    return records


def runtime_records(rows: list[ReportRow]) -> list[dict[str, Any]]:
    """The runtime table as numbers, one record per row and runtime it measured (or tried): batch-1 latency
    (median, p90), images/s, the speed-up over eager, top-1 in that runtime (eager: `test/acc`), whether the
    timing was contended, and the error of a runtime that failed. A row of several seeds has their medians."""
    records = []
    for row in rows:
        metrics = row.run.metrics
        eager = metrics.get(schema.latency_key("eager"))
        for runtime in schema.RUNTIMES:
            latency, error = metrics.get(schema.latency_key(runtime)), metrics.get(schema.error_key(runtime))
            if latency is None and error is None:
                continue
            top1 = metrics.get(schema.TEST_ACC if runtime == "eager" else schema.accuracy_key(runtime))
            records.append(
                {
                    "model": row.run.label,
                    "family": row.run.model,
                    "width": row.run.width,
                    "runtime": runtime,
                    "latency_ms": latency,
                    "latency_p90_ms": metrics.get(schema.latency_p90_key(runtime)),
                    "imgs_per_s": metrics.get(schema.throughput_key(runtime)),
                    "speedup_vs_eager": eager / latency if eager and latency else None,
                    "top1": None if top1 is None else round(100 * float(top1), 3),
                    "contended": bool(metrics.get(schema.contended_key(runtime))),
                    "error": error,
                    "cpu": metrics.get("cpu/model"),
                }
            )
    return records


def _wandb_table(records: list[dict[str, Any]]):
    import wandb

    columns = list(records[0])
    return wandb.Table(columns=columns, data=[[record[column] for column in columns] for record in records])


def log_to_wandb(report: Report, project: str = "lnrepro", group: str | None = None) -> str:
    """One W&B run (job_type=report) holding the table (`report/table`), top-1 over seeds with its interval and
    verdict (`report/seeds`: `seed_records`), the runtimes' latency and top-1 (`report/runtimes`:
    `runtime_records`) as Tables of numbers, and the plots as images; returns its directory."""
    import wandb

    run = wandb.init(
        project=project,
        group=group,
        job_type="report",
        dir=str(report.out_dir),
        name=f"report-{report.out_dir.resolve().name}",
        reinit=True,
    )
    try:
        with open(report.files["csv"], newline="") as file:
            records = list(csv.reader(file))
        tables = {"report/table": wandb.Table(columns=records[0], data=records[1:])}
        for key, rows in (
            ("report/seeds", seed_records(report.rows)),
            ("report/runtimes", runtime_records(report.rows)),
        ):
            if rows:
                tables[key] = _wandb_table(rows)
        run.log(tables)
        images = {
            f"report/{name}": wandb.Image(str(path)) for name, path in report.files.items() if path.suffix == ".png"
        }
        if images:
            run.log(images)
        run.summary["report/runs"] = len(report.rows)
        return run.dir
    finally:
        run.finish()
