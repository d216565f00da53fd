"""The profiling task: build a network as training would, measure it without training, print and save a row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from lnrepro import schema
from lnrepro.profiling import MacCount, ProfileSettings, count_macs, profile_model
from lnrepro.profiling.context import shape_text
from lnrepro.schema import write_metrics
from lnrepro.tasks.common import log
from lnrepro.tasks.train import run_facts
from lnrepro.utils.files import atomic_write_text
from lnrepro.utils.instantiate import instantiate
from lnrepro.utils.tables import markdown_table, print_table

# (column title, metrics key, format); the order of the seed table where it has the column.
COLUMNS = [
    ("model", "model", "{}"),
    ("width", "width", "{}"),
    ("input", "input_size", "{}"),
    ("params", schema.PARAMS, "{:,}"),
    ("conv params", schema.PARAMS_CONV, "{:,}"),
    ("MACs (M)", schema.MACS, "{:.1f}", 1e-6),
    ("FLOPs (M)", schema.FLOPS, "{:.1f}", 1e-6),
    ("MAC (MB)", schema.MAC_BYTES, "{:.1f}", 2**-20),
    ("latency ms", schema.LATENCY_MS, "{:.2f}"),
    ("p90 ms", schema.LATENCY_P90_MS, "{:.2f}"),
    ("ONNX ms", schema.ONNX_LATENCY_MS, "{:.2f}"),
    ("infer img/s", schema.INFER_IMGS_PER_S, "{:.1f}"),
    ("train img/s", schema.TRAIN_IMGS_PER_S, "{:.1f}"),
    ("peak MB", schema.MEMORY_PEAK_MB, "{:.1f}"),
]
# Printed under the table: what the timings depend on.
CONTEXT = (schema.DEVICE, schema.DTYPE, schema.THREADS, schema.BATCH_SIZE, schema.TORCH_VERSION)


def format_row(metrics: dict[str, Any]) -> list[str]:
    cells = []
    for title, key, fmt, *scale in COLUMNS:
        value = metrics.get(key)
        if value is None:
            cells.append("-")
        else:
            cells.append(fmt.format(value * scale[0] if scale else value))
    return cells


def print_rows(rows: list[dict[str, Any]], title: str = "efficiency (MACs = multiply-adds, FLOPs = 2 x MACs)") -> None:
    context = ", ".join(f"{key} {rows[0].get(key)}" for key in CONTEXT) if rows else ""
    print_table(title, [(title_, fmt == "{}") for title_, _, fmt, *_ in COLUMNS], [format_row(m) for m in rows],
                caption=f"latency at batch 1; {context}")


def print_layers(macs: MacCount) -> None:
    columns = [("layer", True), ("type", True), ("output", True), ("params", False), ("MACs", False),
               ("MAC bytes", False)]
    rows = [[layer.name, layer.type, shape_text(layer.output_shape), f"{layer.params:,}", f"{layer.macs:,}",
             f"{layer.mac_bytes:,}"] for layer in macs.layers if layer.macs or layer.params or layer.mac_bytes]
    print_table("per layer, one image (MACs = multiply-adds)", columns, rows)


def profile(cfg: DictConfig) -> dict[str, Any]:
    """Measure `cfg.model` on `cfg.data`'s input as the `profile` config group says; write metrics.json; return
    the row. With `profile.guidelines` set, run ShuffleNet V2's guideline micro-benchmarks instead."""
    settings = ProfileSettings.from_config(cfg.profile)
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(cfg.get("seed") or 0)
    if settings.guidelines:
        return profile_guidelines(cfg, settings)
    net = instantiate(cfg.model).to(settings.device)
    input_size = (3, int(cfg.data.image_size), int(cfg.data.image_size))
    log.info("profiling %s on %s, input %s", cfg.model.name, settings.device, input_size)
    macs = count_macs(net, input_size)  # once, for the totals and the per-layer table
    metrics = profile_model(net, input_size, settings, macs=macs)
    if settings.onnx:
        from lnrepro.profiling.onnx_latency import onnx_latency

        deployed = onnx_latency(net, input_size, runs=settings.runs, warmup=settings.warmup,
                                save_to=Path(cfg.paths.output_dir) / "model.onnx")
        metrics.update({schema.ONNX_LATENCY_MS: deployed.median_ms, schema.ONNX_LATENCY_P90_MS: deployed.p90_ms,
                        schema.ONNX_MAX_ABS_DIFF: deployed.max_abs_diff, schema.ONNX_RUNTIME: deployed.runtime_version})
    metrics.update(run_facts(cfg), task="profile")
    if settings.layers:
        print_layers(macs)
    print_rows([metrics])
    write_metrics(cfg.paths.output_dir, metrics)
    return metrics


def paper_cell(value: float | None, first: float | None) -> str | None:
    """The paper's figure with its speed relative to the table's first row: what can be compared across devices."""
    return None if value is None else f"{value:g} ({value / first:.2f})"


# (column title, left-aligned, cell text of a row dict or None for "-") of the guideline tables; guidelines.csv
# also has ms_per_batch and the measurement context.
GUIDELINE_COLUMNS = [
    ("setting", True, lambda r: r["setting"]),
    ("channels", True, lambda r: r["channels"]),
    ("FLOPs (M)", False, lambda r: f"{r['flops'] / 1e6:.1f}"),
    ("MAC (MB)", False, lambda r: f"{r['mac_bytes'] / 2**20:.2f}"),
    ("elem-wise (MB)", False, lambda r: f"{r['elementwise_bytes'] / 2**20:.2f}"),
    ("img/s", False, lambda r: f"{r['images_per_s']:.1f}"),
    ("spread", False, lambda r: f"{r['spread']:.0%}"),
    ("relative", False, lambda r: f"{r['relative_speed']:.2f}"),
    ("paper GPU batch/s (rel.)", False, lambda r: paper_cell(r["paper_gpu"], r["paper_gpu_first"])),
    ("paper ARM img/s (rel.)", False, lambda r: paper_cell(r["paper_arm"], r["paper_arm_first"])),
]


GUIDELINE_TABLE_COLUMNS = [(title, left) for title, left, _ in GUIDELINE_COLUMNS]


def guideline_cells(row: dict[str, Any]) -> list[str]:
    return [cell if (cell := text(row)) is not None else "-" for _, _, text in GUIDELINE_COLUMNS]


def guideline_caption(rows: list[dict[str, Any]]) -> str:
    first = rows[0]
    return (f"one image: FLOPs = 2 x multiply-adds, MAC = conv inputs + outputs + weights (fp32); speed at batch "
            f"{first['batch_size']}, input {first['input_size']} (first row), {first['blocks']} blocks, median of "
            f"{first['rounds']} interleaved rounds of {first['runs']} batches (spread: their interquartile range / "
            f"median); "
            f"{first['device']}, {first['dtype']}, threads {first['threads']}, torch {first['torch_version']}")


def guidelines_markdown(tables: dict[str, list[dict[str, Any]]]) -> str:
    from lnrepro.profiling.guidelines import TITLES

    parts = []
    for guideline, rows in tables.items():
        parts.append(f"### {TITLES[guideline]}\n")
        parts.extend(markdown_table(GUIDELINE_TABLE_COLUMNS, [guideline_cells(row) for row in rows]))
        parts.append(f"\n{guideline_caption(rows)}\n")
    return "\n".join(parts)


def profile_guidelines(cfg: DictConfig, settings: ProfileSettings) -> dict[str, Any]:
    """ShuffleNet V2's four guideline benchmarks (conf/experiment/shufflenetv2_guidelines.yaml): one table each,
    printed and written to guidelines.md and guidelines.csv in the run directory; returns {guideline: rows}."""
    import csv

    import rich
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from lnrepro.profiling.guidelines import TITLES, run_guidelines

    # One transient bar over every timing (rows x rounds of each table), on a terminal only. It redraws when a
    # timing ends, not from a refresh thread, so that it takes no CPU from the networks being timed.
    console = rich.get_console()
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console, transient=True, auto_refresh=False,
                   disable=not console.is_terminal)
    task = bar.add_task("", total=None)
    started: set[str] = set()

    def progress(guideline: str, done: int, total: int) -> None:
        if bar.disable and guideline not in started:
            # Without the bar (a log file), a line per table says how far the benchmark is. Under the live bar
            # a log line would garble it: the logging handler writes to the terminal past rich's console.
            log.info("benchmarking %s", TITLES[guideline])
        started.add(guideline)
        bar.update(task, description=f"benchmarking {guideline.upper()}", completed=done, total=total, refresh=True)

    # Options left unset (null) take run_guideline's defaults, the paper's settings.
    options = {key: value for key, value in settings.guideline.items() if value is not None}
    with bar:
        tables = run_guidelines(settings.guidelines, progress=progress, device=settings.device, runs=settings.runs,
                                warmup=settings.warmup, **options)
    rows = {guideline: [row.as_dict() for row in table] for guideline, table in tables.items()}
    for guideline, table_rows in rows.items():
        print_table(TITLES[guideline], GUIDELINE_TABLE_COLUMNS, [guideline_cells(row) for row in table_rows],
                    caption=guideline_caption(table_rows))
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "guidelines.md", guidelines_markdown(rows))
    flat = [row for table_rows in rows.values() for row in table_rows]
    with open(output_dir / "guidelines.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    log.info("guideline tables written to %s", output_dir / "guidelines.md")
    return rows
