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
    """Measure `cfg.model` on `cfg.data`'s input (see conf/profile.yaml); write metrics.json; return the row."""
    settings = cfg.profile
    if settings.get("threads"):
        torch.set_num_threads(int(settings.threads))
    torch.manual_seed(cfg.get("seed") or 0)
    net = instantiate(cfg.model).to(settings.device)
    input_size = (3, int(cfg.data.image_size), int(cfg.data.image_size))
    log.info("profiling %s on %s, input %s", cfg.model.name, settings.device, input_size)
    metrics = profile_model(net, input_size, batch_size=int(settings.batch_size), runs=int(settings.runs),
                            warmup=int(settings.warmup), train=bool(settings.train), memory=bool(settings.memory))
    metrics.update(run_facts(cfg))
    if settings.get("layers"):
        print_layers(net, input_size)
    print_rows([metrics])
    write_metrics(Path(cfg.paths.output_dir) / "metrics.json", metrics)
    return metrics
