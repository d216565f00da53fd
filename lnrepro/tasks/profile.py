"""The profiling task: build a network as training would, measure it without training, print and save a row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import rich.console
import rich.table
import torch
from omegaconf import DictConfig

from lnrepro.profiling import count_macs, profile_model
from lnrepro.tasks.common import log, write_metrics
from lnrepro.tasks.train import run_facts
from lnrepro.utils.instantiate import instantiate

# (column title, metrics key, format); the order of the seed table where it has the column.
COLUMNS = [
    ("model", "model", "{}"),
    ("width", "width", "{}"),
    ("input", "input_size", "{}"),
    ("params", "params", "{:,}"),
    ("conv params", "params_conv", "{:,}"),
    ("MACs (M)", "macs", "{:.1f}", 1e-6),
    ("FLOPs (M)", "flops", "{:.1f}", 1e-6),
    ("MAC (MB)", "mac_bytes", "{:.1f}", 2**-20),
    ("latency ms", "latency_ms", "{:.2f}"),
    ("p90 ms", "latency_p90_ms", "{:.2f}"),
    ("ONNX ms", "onnx/latency_ms", "{:.2f}"),
    ("infer img/s", "infer/imgs_per_s", "{:.1f}"),
    ("train img/s", "train/imgs_per_s", "{:.1f}"),
    ("peak MB", "memory/peak_mb", "{:.1f}"),
]
# Printed under the table: what the timings depend on.
CONTEXT = ("device", "dtype", "threads", "batch_size", "torch_version")


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
    table = rich.table.Table(title=title, caption=f"latency at batch 1; {context}")
    for title_, _, fmt, *_ in COLUMNS:
        table.add_column(title_, justify="left" if fmt == "{}" else "right", no_wrap=True)
    for metrics in rows:
        table.add_row(*format_row(metrics))
    wide_console().print(table)


def wide_console() -> rich.console.Console:
    # Piped output (logs, CI) would otherwise be cut to 80 columns.
    console = rich.console.Console()
    return console if console.width >= 160 else rich.console.Console(width=160)


def print_layers(net: torch.nn.Module, input_size) -> None:
    table = rich.table.Table(title="per layer, one image (MACs = multiply-adds)")
    for name in ("layer", "type", "output", "params", "MACs", "MAC bytes"):
        table.add_column(name, justify="left" if name in ("layer", "type", "output") else "right")
    for layer in count_macs(net, input_size).layers:
        if layer.macs or layer.params or layer.mac_bytes:
            table.add_row(layer.name, layer.type, "x".join(map(str, layer.output_shape)), f"{layer.params:,}",
                          f"{layer.macs:,}", f"{layer.mac_bytes:,}")
    wide_console().print(table)


def profile(cfg: DictConfig) -> dict[str, Any]:
    """Measure `cfg.model` on `cfg.data`'s input (see conf/profile.yaml); write metrics.json; return the row.
    With `profile.guidelines` set, run ShuffleNet V2's guideline micro-benchmarks instead (`profile_guidelines`)."""
    settings = cfg.profile
    if settings.get("threads"):
        torch.set_num_threads(int(settings.threads))
    torch.manual_seed(cfg.get("seed") or 0)
    if settings.get("guidelines"):
        return profile_guidelines(cfg)
    net = instantiate(cfg.model).to(settings.device)
    input_size = (3, int(cfg.data.image_size), int(cfg.data.image_size))
    log.info("profiling %s on %s, input %s", cfg.model.name, settings.device, input_size)
    metrics = profile_model(net, input_size, batch_size=int(settings.batch_size), runs=int(settings.runs),
                            warmup=int(settings.warmup), train=bool(settings.train), memory=bool(settings.memory))
    if settings.get("onnx"):
        from lnrepro.profiling.onnx_latency import onnx_latency

        deployed = onnx_latency(net, input_size, runs=int(settings.runs), warmup=int(settings.warmup),
                                save_to=Path(cfg.paths.output_dir) / "model.onnx")
        metrics.update({"onnx/latency_ms": deployed.median_ms, "onnx/latency_p90_ms": deployed.p90_ms,
                        "onnx/max_abs_diff": deployed.max_abs_diff, "onnx/runtime": deployed.runtime_version})
    metrics.update(run_facts(cfg))
    if settings.get("layers"):
        print_layers(net, input_size)
    print_rows([metrics])
    write_metrics(Path(cfg.paths.output_dir) / "metrics.json", metrics)
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
        parts.append("| " + " | ".join(title for title, *_ in GUIDELINE_COLUMNS) + " |")
        parts.append("|" + "|".join("---" if left else "---:" for _, left, _ in GUIDELINE_COLUMNS) + "|")
        parts.extend("| " + " | ".join(guideline_cells(row)) + " |" for row in rows)
        parts.append(f"\n{guideline_caption(rows)}\n")
    return "\n".join(parts)


def profile_guidelines(cfg: DictConfig) -> dict[str, Any]:
    """ShuffleNet V2's four guideline benchmarks (conf/experiment/shufflenetv2_guidelines.yaml): one table each,
    printed and written to guidelines.md and guidelines.csv in the run directory; returns {guideline: rows}."""
    import csv

    from lnrepro.profiling.guidelines import TITLES, run_guidelines

    settings = cfg.profile
    options = settings.get("guideline") or {}
    tables = run_guidelines(
        list(settings.guidelines), progress=lambda g: log.info("benchmarking %s", TITLES[g]),
        scale=float(options.get("scale") or 1.0), size=int(options.get("size") or 56),
        blocks=int(options.get("blocks") or 10), batch_size=options.get("batch_size"),
        platform=options.get("platform"), device=settings.device, runs=int(settings.runs),
        warmup=int(settings.warmup), rounds=int(options.get("rounds") or 5))
    rows = {guideline: [row.as_dict() for row in table] for guideline, table in tables.items()}
    for guideline, table_rows in rows.items():
        table = rich.table.Table(title=TITLES[guideline], caption=guideline_caption(table_rows))
        for title, left, _ in GUIDELINE_COLUMNS:
            table.add_column(title, justify="left" if left else "right", no_wrap=True)
        for row in table_rows:
            table.add_row(*guideline_cells(row))
        wide_console().print(table)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "guidelines.md").write_text(guidelines_markdown(rows))
    flat = [row for table_rows in rows.values() for row in table_rows]
    with open(output_dir / "guidelines.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    log.info("guideline tables written to %s", output_dir / "guidelines.md")
    return rows
