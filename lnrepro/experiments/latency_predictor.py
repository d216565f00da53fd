"""`lnrepro-profile experiment=latency_predictor`: measure sampled networks and kernel stacks per layer in each of
`profile.runtimes`, fit a latency predictor per runtime (`lnrepro.profiling.predictor`) and validate it by leaving
each of the six lightweight families out.

What is measured (`plan`): `networks` variants of the zoo, in turn one of the six families (MobileNet V1, V2, V3
large or small, ShuffleNet V1 with 1-8 groups, ShuffleNet V2, GhostNet) and every seventh a baseline (VGG16 or
ResNet34 with standard, depthwise-separable or Ghost convolutions, a CIFAR ResNet), at widths 0.25-2.0 and input
sides 32-224 (CIFAR stems up to 64, ImageNet stems above); and `kernels` stacks of ten random convolutions (kind,
channels, kernel, stride, groups, activation) with windowed poolings and squeeze-and-excitation blocks between them,
the single-kernel coverage nn-Meter samples, so that a held-out family's kernels and glue (ShuffleNet V1's grouped
1x1 convolutions and average pooling, MobileNet V3's SE blocks) are still covered. The sample of index i depends on
(seed, i) alone: a larger `networks` extends a smaller one.

Each measured sample is appended to `measurements.jsonl` in the predictor's cache folder (`PredictorKey.folder`)
as it finishes: a fit that is stopped, killed or over `max_minutes` resumes where it was by running the same command.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lnrepro.errors import UserInputError, check_integer
from lnrepro.models.layers import SqueezeExcite
from lnrepro.profiling import ProfileSettings
from lnrepro.profiling.kernels import KernelShape, NetworkDescription, describe, paired_rows
from lnrepro.profiling.predictor import (
    PredictorKey,
    RooflinePeaks,
    Sample,
    fit_predictor,
    forget_loaded,
    leave_one_family_out,
    validation_metrics,
)
from lnrepro.utils.files import atomic_write_text
from lnrepro.utils.tables import print_table

log = logging.getLogger(__name__)

#: The experiment's own keys in the profile group (not profile settings): popped before `ProfileSettings`.
CONFIG_KEYS = ("predictor",)
MEASUREMENTS = "measurements.jsonl"
#: What a measured record holds (a record with an `error` holds none of them).
RECORD_KEYS = ("id", "name", "family", "network", "rows", "latencies_ms")
#: Bump when the sampler changes: earlier measurements then stop matching any candidate's id.
PLAN_VERSION = 1
#: Bump when the kernel stacks are sampled differently.
STACK_VERSION = 5
#: Convolutions per kernel stack, and the most multiply-adds one may do.
STACK_LAYERS = 10
STACK_LAYER_MACS = 20_000_000
#: Bump when what is measured changes: earlier measurements are then measured again.
MEASURE_VERSION = 2

#: Held-out family -> (zoo name, fixed options) variants.
FAMILIES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "mobilenet_v1": [("mobilenet_v1", {})],
    "mobilenet_v2": [("mobilenet_v2", {})],
    "mobilenet_v3": [("mobilenet_v3_large", {}), ("mobilenet_v3_small", {})],
    "shufflenet_v1": [("shufflenet_v1", {"groups": groups}) for groups in (1, 2, 3, 4, 8)],
    "shufflenet_v2": [("shufflenet_v2", {})],
    "ghostnet": [("ghostnet", {})],
}
#: Training-only networks (never held out): narrow and small, they add dense 3x3 convolutions and residual glue.
BASELINES = [
    *[("vgg16", {"conv": conv}) for conv in ("standard", "dwpw", "ghost")],
    *[("resnet34", {"conv": conv}) for conv in ("standard", "dwpw", "ghost")],
    ("resnet20", {}),
    ("resnet56", {}),
]
WIDTHS = (0.25, 0.35, 0.5, 0.6, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 1.75, 2.0)
SIDES = (32, 48, 64, 96, 128, 160, 192, 224)
ACTIVATIONS = ("relu", "relu6", "hardswish", "none")
#: Windowed poolings a kernel stack may hold between its convolutions (kernel 3, stride 2, padding 1).
POOLS = {"avgpool": nn.AvgPool2d, "maxpool": nn.MaxPool2d}


@dataclass(frozen=True)
class Candidate:
    """One thing to measure: a zoo network (`model` set) or a kernel stack (`layers` set), at `side` x `side`."""

    id: str
    family: str
    side: int
    model: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    width: float = 1.0
    stem: str = "imagenet"
    layers: tuple[tuple[str, int, int, int, int, str], ...] = ()  # (kind, channels, kernel, stride, groups, act)
    # kind is a convolution kind, a windowed pooling of `POOLS` or "se" (squeeze-and-excitation)

    @property
    def name(self) -> str:
        if self.model is None:
            return f"kernel stack {self.id.rsplit('-', 1)[-1]} @{self.side}"
        options = "".join(f" {key}={value}" for key, value in self.options.items())
        return f"{self.model}{options} w{self.width:g} @{self.side}"

    def build(self) -> nn.Module:
        if self.model is None:
            return KernelStack(self.layers)
        from lnrepro.models import build_model

        classes = 10 if self.stem == "cifar" else 1000
        return build_model(self.model, width=self.width, num_classes=classes, stem=self.stem, **self.options)


class KernelStack(nn.Sequential):
    """Convolutions in a row, each with BatchNorm and an activation: (kind, out channels, kernel, stride, groups,
    activation) per layer, from 3 input channels."""

    def __init__(self, layers: Sequence[tuple[str, int, int, int, int, str]]) -> None:
        modules: list[nn.Module] = []
        channels = 3
        for kind, out, kernel, stride, groups, activation in layers:
            if kind in POOLS:  # a windowed pooling, as ShuffleNet V1's shortcut and the ImageNet stems pool
                modules.append(POOLS[kind](kernel, stride, kernel // 2))
                continue
            if kind == "se":  # MobileNet V3's and GhostNet's squeeze-and-excitation, a quarter of the channels
                modules.append(SqueezeExcite(channels, max(8, channels // 4)))
                continue
            if kind == "depthwise":
                out, groups = channels, channels
            modules.append(nn.Conv2d(channels, out, kernel, stride, kernel // 2, groups=groups, bias=False))
            modules.append(nn.BatchNorm2d(out))
            if activation != "none":
                modules.append({"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish}[activation]())
            channels = out
        super().__init__(*modules)


def _network(index: int, seed: int) -> Candidate:
    rng = random.Random(f"{PLAN_VERSION}-{seed}-network-{index}")
    order = [*FAMILIES, "baseline"]
    family = order[index % len(order)]
    if family == "baseline":
        model, options = rng.choice(BASELINES)
        width, side = rng.choice(WIDTHS[:3]), rng.choice(SIDES[:3])  # kept cheap: these are big networks
    else:
        model, options = rng.choice(FAMILIES[family])
        width, side = rng.choice(WIDTHS), rng.choice(SIDES)
    stem = "cifar" if side <= 64 else "imagenet"
    if model.startswith("resnet") and model != "resnet34":
        stem = "cifar"
    return Candidate(f"n{PLAN_VERSION}.{MEASURE_VERSION}-{seed}-{index}", family, side, model, options, width, stem)


def _stack(index: int, seed: int) -> Candidate:
    rng = random.Random(f"{STACK_VERSION}-{seed}-kernels-{index}")
    side = rng.choice((14, 28, 56, 112))
    layers, channels, spatial = [], 3, side
    for position in range(STACK_LAYERS):
        kind = (
            "conv" if position == 0 else rng.choice(("conv1x1", "conv1x1", "depthwise", "depthwise", "grouped", "conv"))
        )
        stride = 2 if spatial >= 8 and rng.random() < 0.2 else 1
        groups = rng.choice((2, 3, 4, 8)) if kind == "grouped" and channels % 2 == 0 else 1
        if kind == "grouped" and (groups == 1 or channels % groups):
            kind, groups = "conv1x1", 1
        kernel = {"conv1x1": 1, "grouped": 1}.get(kind) or rng.choice(
            (3, 3, 5, 7) if kind == "depthwise" else (3, 3, 5)
        )
        # half of them off the multiples of 8 that SIMD layouts want (GhostNet's and ShuffleNet V2's odd widths)
        out = channels if kind == "depthwise" else groups * rng.choice((8, 1)) * rng.randint(2, 96)
        out_side = math.ceil(spatial / stride)
        per_output = (1 if kind == "depthwise" else channels // groups) * kernel * kernel
        while kind != "depthwise" and out > groups and out * per_output * out_side**2 > STACK_LAYER_MACS:
            out = max(groups, out // 2 // groups * groups)  # bounded work: a stack measures in about a second
        layers.append((kind, out, kernel, stride, groups, rng.choice(ACTIVATIONS)))
        channels, spatial = out, out_side
        if rng.random() < 0.2:
            layers.append(("se", channels, 1, 1, 1, "none"))
        if spatial >= 4 and rng.random() < 0.15:
            layers.append((rng.choice(tuple(POOLS)), channels, 3, 2, 1, "none"))
            spatial = math.ceil(spatial / 2)
    return Candidate(f"k{STACK_VERSION}.{MEASURE_VERSION}-{seed}-{index}", "kernels", side, layers=tuple(layers))


def _signature(candidate: Candidate) -> tuple:
    return (
        candidate.model,
        tuple(sorted(candidate.options.items())),
        candidate.width,
        candidate.side,
        candidate.layers,
    )


def plan(networks: int, kernels: int, seed: int = 0) -> list[Candidate]:
    """The candidates of a fit, networks and kernel stacks interleaved (a fit stopped early has some of each)."""
    items, seen, attempt = [], set(), 0
    while len(items) < networks:  # a network drawn twice is drawn again (in order: a larger plan extends a smaller)
        candidate = _network(attempt, seed)
        attempt += 1
        if _signature(candidate) not in seen:
            seen.add(_signature(candidate))
            items.append(candidate)
    stacks = [_stack(index, seed) for index in range(kernels)]
    merged: list[Candidate] = []
    for index in range(max(len(items), len(stacks))):
        merged += items[index : index + 1] + stacks[index : index + 1]
    return merged


# --- measuring ----------------------------------------------------------------------------------
def measure_sample(
    model: nn.Module, side: int, runtime: str, network: NetworkDescription, blocks: int, runs: int, warmup: int
) -> dict[str, Any]:
    """The runtime's kernel rows of `model` and its quiet batch-1 latency (`timing.quiet_latency_ms`) measured before
    and after them."""
    from lnrepro.profiling.exported import EXPORTED_FILES
    from lnrepro.profiling.layer_times import runtime_layer_times, time_by_kind
    from lnrepro.profiling.runtimes import prepare
    from lnrepro.profiling.timing import quiet_latency_ms

    input_size = (3, side, side)
    with tempfile.TemporaryDirectory(prefix="lnrepro-predictor-") as scratch:
        runner = prepare(runtime, model, input_size, workdir=scratch)
        before = quiet_latency_ms(model, input_size, blocks, runs, warmup, run=runner)
        exported = {runtime: Path(scratch) / EXPORTED_FILES[runtime]} if runtime in EXPORTED_FILES else None
        table = runtime_layer_times(runtime, model, input_size, runs=2 * runs, warmup=warmup, exported=exported)
        after = quiet_latency_ms(model, input_size, blocks, runs, 1, run=runner)
    return {
        "network": network.to_json(),
        # the runtime's own shapes (ONNX Runtime's padded channels): `samples_of` pairs them with the network's
        "rows": [[*row.shape.as_list(), row.time_ms] for row in table.rows if row.shape is not None],
        "latencies_ms": [before, after],
        "layers_latency_ms": table.latency_ms,  # the runtime's latency timed with the profiled passes
        "kinds_ms": {kind: ms for kind, ms, _ in time_by_kind(row.row(None) for row in table.rows)},
    }


class MeasurementStore:
    """The samples measured for one predictor key, one JSON line each, appended as they finish."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / MEASUREMENTS

    def read(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return records
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
                if not record.get("error") and not all(key in record for key in RECORD_KEYS):
                    continue
                records[record["id"]] = record
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # the last line of a fit killed while writing it
        return records

    def append(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a line cut short by a killed fit has no newline: the next record starts on a line of its own
        cut = self.path.is_file() and self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n")
        with open(self.path, "a") as file:
            file.write(("\n" if cut else "") + json.dumps(record) + "\n")
            file.flush()
            os.fsync(file.fileno())


def samples_of(records: Mapping[str, Mapping[str, Any]]) -> list[Sample]:
    """The stored measurements as the predictor's samples, each row with its kernel's logical shape
    (`kernels.paired_rows`); rows that cannot be paired, and zero times (below the profiler's resolution), are left
    out of the kernel fit (the network's latency still counts them)."""
    samples = []
    for record in records.values():
        if record.get("error") or record.get("measure_version") != MEASURE_VERSION:
            continue
        network = NetworkDescription.from_json(record["network"])
        # rows were timed in seconds that may have been slower than the quiet latency: scaled to it
        latency = sum(record["latencies_ms"]) / len(record["latencies_ms"])
        scale = latency / record["layers_latency_ms"] if record.get("layers_latency_ms") else 1.0
        measured = [(KernelShape.from_list(values[:-1]), scale * float(values[-1])) for values in record["rows"]]
        rows, unpaired = paired_rows(network.kernels, measured)
        if unpaired:
            log.debug("latency predictor: %d rows of %s not paired with its kernels", unpaired, record["name"])
        samples.append(
            Sample(
                record["name"],
                record["family"],
                network,
                [(kernel, ms) for kernel, ms in rows if ms > 0],
                tuple(record["latencies_ms"]),
            )
        )
    return samples


# --- the command ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitOptions:
    networks: int = 60
    kernels: int = 48
    seed: int = 0
    blocks: int = 5  # a latency is the best of this many block medians (`timing.quiet_latency_ms`)
    runs: int = 10  # timed batch-1 passes per block, and twice as many per-layer profiled passes
    warmup: int = 5
    max_minutes: float | None = 30.0  # stop measuring after this long, fit on what was measured (run again: resume)

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> FitOptions:
        node = dict(node or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(node) - known)
        if unknown:
            raise UserInputError(
                f"profile.predictor.{unknown[0]} is not a predictor option; the options are: {', '.join(sorted(known))}"
            )
        options = cls(**node)
        for name, least in (("networks", 0), ("kernels", 0), ("seed", 0), ("blocks", 1), ("runs", 1), ("warmup", 0)):
            check_integer(f"profile.predictor.{name}", getattr(options, name), least)
        if options.networks + options.kernels < 2:
            raise UserInputError("profile.predictor: a fit needs at least 2 networks and kernel stacks together")
        return options


def fit_latency_predictors(options: FitOptions, settings: ProfileSettings, output_dir: Path) -> dict[str, Any]:
    """Measure what `options` plans in each of `settings.runtimes` (resuming from the cache), fit and save one
    predictor per runtime, validate each by leaving one family out; print the validation and write
    validation.json, validation.csv and validation.png into `output_dir`. Returns metrics.json's row."""
    from lnrepro.profiling.roofline import machine_peaks
    from lnrepro.utils.progress import measurement_progress

    if settings.device != "cpu":
        raise UserInputError("the latency predictor is fitted on the CPU: set profile.device=cpu")
    if not settings.runtimes:
        raise UserInputError("profile.runtimes is empty: name the runtimes to fit a latency predictor for")
    settings.check_runtimes("cpu")
    keys = {runtime: PredictorKey.here(runtime) for runtime in settings.runtimes}
    stores = {runtime: MeasurementStore(key.folder()) for runtime, key in keys.items()}
    candidates = plan(options.networks, options.kernels, options.seed)
    done = {runtime: set(store.read()) for runtime, store in stores.items()}
    todo = [(c, runtime) for c in candidates for runtime in settings.runtimes if c.id not in done[runtime]]
    resumed = len(candidates) * len(settings.runtimes) - len(todo)
    log.info(
        "latency predictor: %d networks and %d kernel stacks in %s; %d of %d measurements already in %s",
        options.networks,
        options.kernels,
        ", ".join(settings.runtimes),
        resumed,
        len(candidates) * len(settings.runtimes),
        ", ".join(str(store.path) for store in stores.values()),
    )
    start, stopped = time.monotonic(), False
    with measurement_progress() as bar:
        task = bar.add_task("latency predictor", total=len(todo))
        built: tuple[str, nn.Module, NetworkDescription] | None = None
        for count, (candidate, runtime) in enumerate(todo):
            minutes = (time.monotonic() - start) / 60
            if options.max_minutes is not None and minutes > options.max_minutes:
                stopped = True
                log.warning(
                    "latency predictor: stopped measuring after %.0f min (profile.predictor.max_minutes) with %d of %d "
                    "left; the same command resumes",
                    minutes,
                    len(todo) - count,
                    len(todo),
                )
                break
            bar.update(task, description=f"{candidate.name} in {runtime}", completed=count, refresh=True)
            record: dict[str, Any] = {
                "id": candidate.id,
                "name": candidate.name,
                "family": candidate.family,
                "measure_version": MEASURE_VERSION,
            }
            try:
                if built is None or built[0] != candidate.id:
                    model = candidate.build().eval()
                    built = (candidate.id, model, describe(model, (3, candidate.side, candidate.side)))
                record.update(
                    measure_sample(
                        built[1], candidate.side, runtime, built[2], options.blocks, options.runs, options.warmup
                    )
                )
            except UserInputError as error:  # a network this runtime refuses (an operator it cannot lower)
                record["error"] = str(error)
                log.warning("latency predictor: %s in %s not measured: %s", candidate.name, runtime, error)
            except Exception as error:  # anything else may pass: not recorded, so the next run tries it again
                log.warning(
                    "latency predictor: %s in %s failed (%s: %s); left for the next run",
                    candidate.name,
                    runtime,
                    type(error).__name__,
                    str(error).splitlines()[0][:200] if str(error) else "",
                )
                continue
            stores[runtime].append(record)
            log.info(
                "latency predictor: %d/%d %s in %s: %s",
                resumed + count + 1,
                len(candidates) * len(settings.runtimes),
                candidate.name,
                runtime,
                "error" if record.get("error") else f"{sum(record['latencies_ms']) / 2:.3f} ms",
            )
        bar.update(task, completed=len(todo), refresh=True)
    metrics: dict[str, Any] = {"predictor/stopped_early": stopped, "predictor/measure_s": time.monotonic() - start}
    peaks_measured = machine_peaks(torch.get_num_threads())
    peaks = RooflinePeaks(peaks_measured.gflops, peaks_measured.gbps)
    held_rows: list[tuple[str, Any]] = []
    for runtime, key in keys.items():
        measured = samples_of(stores[runtime].read())
        predictor = fit_predictor(key, measured, peaks)
        folder = predictor.save()
        held = leave_one_family_out(key, measured, peaks)
        metrics.update(validation_metrics(runtime, held))
        metrics[f"predictor/{runtime}/samples"] = len(measured)
        metrics[f"predictor/{runtime}/folder"] = str(folder)
        metrics[f"predictor/{runtime}/key"] = key.describe()
        held_rows += [(runtime, row) for row in held]
    forget_loaded()
    write_validation(output_dir, metrics, held_rows, list(keys))
    print_validation(metrics, list(keys))
    return metrics


def write_validation(
    output_dir: Path, metrics: Mapping[str, Any], held: list[tuple[str, Any]], runtimes: list[str]
) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "validation.json", json.dumps(dict(metrics), indent=1, sort_keys=True) + "\n")
    text = StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["runtime", "family", "network", "measured_ms", "predicted_ms", "error_pct", "spread_pct"])
    for runtime, row in held:
        writer.writerow(
            [
                runtime,
                row.family,
                row.name,
                f"{row.measured_ms:.4f}",
                f"{row.predicted_ms:.4f}",
                f"{100 * row.error:.2f}",
                f"{100 * row.spread:.2f}",
            ]
        )
    atomic_write_text(output_dir / "validation.csv", text.getvalue())
    if held:
        plot_validation(output_dir / "validation.png", held, runtimes)


def plot_validation(path: Path, held: list[tuple[str, Any]], runtimes: list[str]) -> Path:
    """Predicted against measured latency of every held-out network, one panel per runtime, with the +-10% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(runtimes), figsize=(5 * len(runtimes), 4.6), squeeze=False)
    for axis, runtime in zip(axes[0], runtimes):
        rows = [row for name, row in held if name == runtime]
        if not rows:
            continue
        low = min(min(r.measured_ms, r.predicted_ms) for r in rows) * 0.8
        high = max(max(r.measured_ms, r.predicted_ms) for r in rows) * 1.25
        line = [low, high]
        axis.plot(line, line, color="black", linewidth=0.8)
        axis.fill_between(line, [v * 0.9 for v in line], [v * 1.1 for v in line], color="grey", alpha=0.2, label="±10%")
        for family in sorted({r.family for r in rows}):
            chosen = [r for r in rows if r.family == family]
            axis.scatter([r.measured_ms for r in chosen], [r.predicted_ms for r in chosen], s=14, label=family)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("measured batch-1 latency (ms)")
        axis.set_ylabel("predicted, its family held out (ms)")
        axis.set_title(runtime)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def print_validation(metrics: Mapping[str, Any], runtimes: list[str]) -> None:
    from lnrepro.profiling.predictor import VALIDATION_FAMILIES

    def cell(key: str, fmt: str) -> str:
        value = metrics.get(key)
        return "-" if value is None else fmt.format(value)

    for runtime in runtimes:
        rows = []
        for prefix, label in [(f"{runtime}/{f}", f) for f in VALIDATION_FAMILIES] + [(runtime, "all")]:
            if f"{prefix}/networks" not in metrics:
                continue
            rows.append(
                [
                    label,
                    cell(f"{prefix}/networks", "{}"),
                    cell(f"{prefix}/within_10pct", "{:.0%}"),
                    cell(f"{prefix}/within_5pct", "{:.0%}"),
                    cell(f"{prefix}/median_error_pct", "{:.1f}%"),
                    cell(f"{prefix}/spearman", "{:.3f}"),
                    cell(f"{prefix}/noise_pct", "{:.1f}%"),
                ]
            )
        noise = metrics.get(f"{runtime}/noise_pct")
        caption = "each family predicted by a predictor fitted without it; noise: median spread of two measurements"
        if noise is not None and noise > 5:
            caption += f" (the noise floor, {noise:.1f}%, exceeds 5%: judge within-5% against it)"
        print_table(
            f"latency predictor for {runtime}: leave one family out",
            [
                ("held out", True),
                ("networks", False),
                ("within 10%", False),
                ("within 5%", False),
                ("median |error|", False),
                ("Spearman", False),
                ("noise", False),
            ],
            rows,
            caption=caption,
        )
