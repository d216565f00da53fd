"""The profiling task: build a network as training would, measure it without training, print and save a row."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from lnrepro import schema
from lnrepro.errors import UserInputError
from lnrepro.experiments import latency_budget, latency_predictor, shufflenetv2_guidelines
from lnrepro.profiling import MacCount, ProfileSettings, count_macs, profile_model, static_metrics
from lnrepro.profiling.context import shape_text
from lnrepro.profiling.exported import EXPORT_DIR
from lnrepro.schema import write_metrics
from lnrepro.tasks.common import log, run_facts
from lnrepro.tasks.deployment import keep_export
from lnrepro.tasks.instantiate import instantiate
from lnrepro.utils.progress import measurement_progress
from lnrepro.utils.tables import print_table

# (column title, metrics key, format); the order of the ghost_vs_dwpw table where it has the column.
COLUMNS = [
    ("model", "model", "{}"),
    ("width", "width", "{}"),
    ("input", "input_size", "{}"),
    ("params", schema.PARAMS, "{:,}"),
    ("conv params", schema.PARAMS_CONV, "{:,}"),
    ("MACs (M)", schema.MACS, "{:.1f}", 1e-6),
    ("FLOPs (M)", schema.FLOPS, "{:.1f}", 1e-6),
    ("MAC (MB)", schema.MAC_BYTES, "{:.1f}", 2**-20),
    ("train img/s", schema.TRAIN_IMGS_PER_S, "{:.1f}"),
    ("peak MiB", schema.MEMORY_PEAK_MIB, "{:.1f}"),
]


# (title, the key for a runtime, format) of the speed table, one row per runtime
RUNTIME_COLUMNS = [
    ("latency ms", schema.latency_key, "{:.2f}"),
    ("predicted ms", schema.predicted_latency_key, "{:.2f}"),
    ("p90 ms", schema.latency_p90_key, "{:.2f}"),
    ("img/s", schema.throughput_key, "{:.0f}"),
    ("test top-1", schema.accuracy_key, "{:.4f}"),
]
# Printed under the table: what the timings depend on.
CONTEXT = (schema.DEVICE, schema.DTYPE, schema.THREADS, schema.BATCH_SIZE, schema.TORCH_VERSION)


def format_row(metrics: dict[str, Any], columns: list[tuple], runtime: str | None = None) -> list[str]:
    cells = []
    for _title, key, fmt, *scale in columns:
        value = metrics.get(key(runtime) if callable(key) else key)
        if value is None:
            cells.append("-")
        else:
            cells.append(fmt.format(value * scale[0] if scale else value))
    return cells


def print_rows(
    rows: list[dict[str, Any]], runtimes: list[str], title: str = "efficiency (MACs = multiply-adds, FLOPs = 2 x MACs)"
) -> None:
    """The counts and memory of each network, then its latency and throughput in each runtime."""
    context = ", ".join(f"{key} {rows[0].get(key)}" for key in CONTEXT) if rows else ""
    print_table(
        title, [(title_, fmt == "{}") for title_, _, fmt, *_ in COLUMNS], [format_row(m, COLUMNS) for m in rows]
    )
    speed = [
        [row.get(schema.MODEL), runtime] + format_row(row, RUNTIME_COLUMNS, runtime)
        for row in rows
        for runtime in runtimes
    ]
    cpu = rows[0].get("cpu/model") if rows else None
    print_table(
        "speed per runtime",
        [("model", True), ("runtime", True)] + [(t, False) for t, *_ in RUNTIME_COLUMNS],
        speed,
        caption=f"latency at batch 1, throughput at batch_size; {context}" + (f"; {cpu}" if cpu else ""),
    )


def print_layers(macs: MacCount) -> None:
    columns = [
        ("layer", True),
        ("type", True),
        ("output", True),
        ("params", False),
        ("MACs", False),
        ("MAC bytes", False),
    ]
    rows = [
        [
            layer.name,
            layer.type,
            shape_text(layer.output_shape),
            f"{layer.params:,}",
            f"{layer.macs:,}",
            f"{layer.mac_bytes:,}",
        ]
        for layer in macs.layers
        if layer.macs or layer.params or layer.mac_bytes
    ]
    print_table("per layer, one image (MACs = multiply-adds)", columns, rows)


# --- profile.layers: where the time goes, per runtime (lnrepro.profiling.layer_times) --------------------------------
def profile_layer_times(
    net: torch.nn.Module, input_size: tuple[int, int, int], settings: ProfileSettings, out_dir: Path, label: str
) -> dict[str, Any]:
    """Each layer of `net` timed in each of `profile.runtimes` that can report it (`settings.runs` profiled passes
    after `settings.warmup`), written as `out_dir/layers/<runtime>.csv`; the files the profile kept in export/
    are timed rather than exported again. Returns the metrics (`layers/<runtime>_sum_ms`, the roofline's peaks);
    a runtime that fails leaves `layers/<runtime>_error` and the others are timed."""
    from lnrepro.profiling.exported import EXPORTED_FILES
    from lnrepro.profiling.layer_times import layer_times

    exported = {runtime: out_dir / EXPORT_DIR / name for runtime, name in EXPORTED_FILES.items()}
    with measurement_progress() as bar:
        task = bar.add_task("", total=len(settings.runtimes))

        def progress(runtime: str, done: int, total: int) -> None:
            bar.update(task, description=f"{label} per layer: {runtime}", completed=done, total=total, refresh=True)

        return layer_times(
            net,
            input_size,
            settings.runtimes,
            out_dir,
            runs=settings.runs,
            warmup=settings.warmup,
            exported=exported,
            keep_going=True,
            progress=progress,
        )


def _cut(text: str, width: int, keep_end: bool = False) -> str:
    # ONNX Runtime names a fused node after its output tensor's module path: there the end says which layer it is
    if len(text) <= width:
        return text
    return "..." + text[-(width - 3) :] if keep_end else text[: width - 3] + "..."


def print_layer_times(out_dir: Path, runtimes: list[str], metrics: dict[str, Any]) -> None:
    """For each runtime, the time by operator kind and the ten most expensive rows of layers/<runtime>.csv (or why
    there is none)."""
    from lnrepro.profiling.layer_times import NOT_REPORTED, layer_table_path, read_layer_table, time_by_kind
    from lnrepro.utils.tables import wide_console

    for runtime in runtimes:
        error = metrics.get(schema.runtime_key(schema.LAYERS_ERROR, runtime))
        path = layer_table_path(out_dir, runtime)
        if runtime in NOT_REPORTED or error or not path.is_file():
            reason = NOT_REPORTED.get(runtime) or error or "no table"
            wide_console().print(f"per-layer times in {runtime}: not reported ({reason})")
            continue
        rows = [row for row in read_layer_table(path) if row["time_ms"] is not None]
        total = sum(row["time_ms"] for row in rows)
        end_to_end = metrics.get(schema.runtime_key(schema.LAYERS_LATENCY, runtime))
        print_table(
            f"where the time goes in {runtime} (one image, median per call)",
            [("kind", True), ("ms", False), ("share", False)],
            [[kind, f"{ms:.3f}", f"{share:.1%}"] for kind, ms, share in time_by_kind(rows)],
            caption=f"{len(rows)} rows, sum {total:.2f} ms"
            + (f"; unprofiled median {end_to_end:.2f} ms, timed with the profiled calls" if end_to_end else "")
            + f"; {path}",
        )

        def number(value: Any, fmt: str) -> str:
            return "-" if value is None else fmt.format(value)

        print_table(
            f"the ten most expensive rows in {runtime}",
            [("name", True), ("kind", True), ("op", True)]
            + [(title, False) for title in ("MACs (M)", "MB", "ms", "GFLOP/s", "GB/s", "roofline")],
            [
                [_cut(row["name"], 44, keep_end=True), row["kind"], _cut(row["op"], 24)]
                + [
                    number(row["macs"] and row["macs"] / 1e6, "{:.2f}"),
                    number(row["bytes"] and row["bytes"] / 1e6, "{:.2f}"),
                    number(row["time_ms"], "{:.3f}"),
                    number(row["gflops"], "{:.1f}"),
                    number(row["gbps"], "{:.1f}"),
                    number(row["roofline_share"], "{:.0%}"),
                ]
                for row in sorted(rows, key=lambda row: -row["time_ms"])[:10]
            ],
            caption="roofline: the roofline's least time for the row's work over its time (above 100%: its data came "
            "from cache, faster than the memory bandwidth the roofline assumes)",
        )


def published_macs(metrics: dict[str, Any]) -> float | None:
    """Multiply-adds of the network in the shipped published tables (ImageNet by family, width, groups and
    resolution; CIFAR-10 ports by model and width), or None."""
    from lnrepro.reporting.collect import Run
    from lnrepro.reporting.reference import load_reference, parse_amount

    run = Run(path=Path("."), metrics=metrics)
    for table in ("imagenet", "cifar10"):
        reference = load_reference(table)
        index = reference.match(run)
        macs = parse_amount(reference.rows[index].get("macs_m")) if index is not None else None
        if macs:
            return macs * 1e6
    return None


def print_conventions(
    net: torch.nn.Module, input_size: tuple[int, int, int], metrics: dict[str, Any]
) -> dict[str, Any]:
    """The multiply-adds of each counting convention beside the published figure; returns their metrics keys."""
    from lnrepro.profiling.conventions import convention_rows, count_conventions, matching_convention

    counts = count_conventions(net, input_size)
    published = published_macs(metrics)
    rows = convention_rows(counts, published)
    print_table(
        "multiply-adds by counting convention (one image; FLOPs = 2 x multiply-adds)",
        [("convention", True), ("MACs (M)", False), ("FLOPs (M)", False), ("vs published", False), ("matches", True)],
        [
            [
                row["convention"],
                f"{row['macs'] / 1e6:.1f}",
                f"{row['flops'] / 1e6:.1f}",
                "-" if row["vs_published"] is None else f"{row['vs_published']:.3f}",
                "yes" if row["matches"] else "",
            ]
            for row in rows
        ],
        caption=f"published: {published / 1e6:.1f}M multiply-adds" if published else "no published figure",
    )
    return {
        **{f"macs/{name}": value for name, value in counts.items()},
        "macs/published": published,
        "macs/matching_convention": matching_convention(counts, published),
    }


def predict(net: torch.nn.Module, input_size: tuple[int, int, int], settings: ProfileSettings) -> dict[str, Any]:
    """`latency/<runtime>_predicted_ms` for each of `settings.runtimes` by the predictors fitted on this machine at
    the profile's thread count (refused in one line, naming the fitting command, where there is none)."""
    from lnrepro.profiling.kernels import describe
    from lnrepro.profiling.predictor import prediction_metrics

    start = time.perf_counter()
    metrics = dict(prediction_metrics(describe(net, input_size), settings.runtimes, settings.threads))
    log.info("predicted latency in %s in %.2f s", ", ".join(settings.runtimes), time.perf_counter() - start)
    return metrics


def _written(cfg: DictConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    metrics = {**metrics, **run_facts(cfg), "task": "profile"}
    write_metrics(cfg.paths.output_dir, metrics)
    return metrics


def profile(cfg: DictConfig) -> dict[str, Any]:
    """Measure `cfg.model` on `cfg.data`'s input as the `profile` config group says; write metrics.json; return
    the row. With `profile.guidelines` set (experiment=shufflenetv2_guidelines), run ShuffleNet V2's guideline
    micro-benchmarks instead."""
    if OmegaConf.is_missing(cfg.profile, "budget_ms"):  # False where there is no such key
        raise UserInputError(
            "experiment=latency_budget needs profile.budget_ms=<milliseconds>, e.g. profile.budget_ms=2"
        )
    node = OmegaConf.to_container(cfg.profile, resolve=True)
    guidelines = {key: node.pop(key) for key in shufflenetv2_guidelines.CONFIG_KEYS if key in node}
    predictor = {key: node.pop(key) for key in latency_predictor.CONFIG_KEYS if key in node}
    budget = {key: node.pop(key) for key in latency_budget.CONFIG_KEYS if key in node}
    settings = ProfileSettings.from_config(node)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(cfg.get("seed") or 0)
    # paper and predictor experiments rather than a network: lnrepro/experiments
    if guidelines.get("guidelines"):
        return shufflenetv2_guidelines.profile_guidelines(
            guidelines["guidelines"], guidelines.get("guideline") or {}, settings, output_dir
        )
    if predictor:
        options = latency_predictor.FitOptions.from_config(predictor["predictor"])
        metrics = latency_predictor.fit_latency_predictors(options, settings, output_dir)
        return _written(cfg, metrics)
    if budget:
        options = latency_budget.BudgetOptions.from_config(budget.get("budget"))
        metrics = latency_budget.profile_budget(budget.get("budget_ms"), options, settings, cfg.data, output_dir)
        return _written(cfg, metrics)
    net = instantiate(cfg.model).to(settings.device)
    input_size = (3, int(cfg.data.image_size), int(cfg.data.image_size))
    log.info("profiling %s on %s, input %s", cfg.model.name, settings.device, input_size)
    macs = count_macs(net, input_size)  # once, for the totals and the per-layer table
    settings.check_runtimes(settings.device)
    if not settings.measure and settings.layers:
        raise UserInputError("profile.layers=true times every layer: it needs profile.measure=true")
    predicted = predict(net, input_size, settings) if settings.predict else {}
    if not settings.measure:  # counts and predictions only: nothing is run in a runtime or exported
        metrics = {**static_metrics(net, input_size, macs=macs), **predicted, **run_facts(cfg), "task": "profile"}
        if settings.flop_conventions:
            metrics.update(print_conventions(net, input_size, metrics))
        print_rows([metrics], settings.runtimes)
        write_metrics(output_dir, metrics)
        return metrics
    export_dir = output_dir / EXPORT_DIR if settings.export else None
    with measurement_progress() as bar:  # compiling and quantising take minutes on small CPUs
        task = bar.add_task("", total=len(settings.runtimes))

        def progress(runtime: str, done: int, total: int) -> None:
            bar.update(task, description=f"{cfg.model.name}: {runtime}", completed=done, refresh=True)

        metrics = profile_model(net, input_size, settings, macs=macs, progress=progress, export_dir=export_dir)
    metrics.update(predicted)
    metrics.update(run_facts(cfg), task="profile")
    if export_dir is not None:  # the data module's class, not an instance: nothing is read or downloaded
        data_class = hydra.utils.get_class(cfg.data._target_)
        keep_export(
            export_dir,
            metrics,
            settings.runtimes,
            net,
            input_size,
            data_class,
            metrics,
            calibration="random images (lnrepro-profile reads no data): int8 files are for timing, not accuracy",
        )
    if settings.layers:
        print_layers(macs)
        out_dir = Path(cfg.paths.output_dir)
        metrics.update(profile_layer_times(net, input_size, settings, out_dir, cfg.model.name))
        print_layer_times(out_dir, settings.runtimes, metrics)
    if settings.flop_conventions:
        metrics.update(print_conventions(net, input_size, metrics))
    print_rows([metrics], settings.runtimes)
    write_metrics(cfg.paths.output_dir, metrics)
    return metrics
