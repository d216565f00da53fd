"""What to measure (`ProfileSettings`, the `profile` config group) and all measurements of one network as one
flat dict under the keys of `lnrepro.schema`.

The same settings drive the end-of-fit profile of a training run (the EfficiencyProfile callback) and the profile
entry point (`lnrepro-profile`), so a batch size or thread count set once holds for both.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from lnrepro import schema
from lnrepro.errors import UserInputError
from lnrepro.profiling.context import InputSize, measurement_context, shape_text
from lnrepro.profiling.counts import MacCount, count_macs, count_parameters
from lnrepro.profiling.memory import inference_peak_memory, training_peak_memory
from lnrepro.profiling.timing import inference_throughput, latency, training_throughput


@dataclass(frozen=True)
class ProfileSettings:
    """The `profile` config group (conf/profile/default.yaml documents each field)."""

    device: str = "cpu"  # lnrepro-profile only; the end-of-fit profile measures where the network trained
    batch_size: int = 64  # throughput and peak memory (latency is always batch 1)
    runs: int = 50  # timed batch-1 passes for latency
    throughput_runs: int = 10  # timed batches for throughput
    warmup: int = 5  # untimed passes before timing
    threads: int | None = None  # torch CPU threads while measuring (None: as they are)
    latency: bool = True
    throughput: bool = True
    train: bool = True  # training peak memory, and (lnrepro-profile) training throughput
    memory: bool = True
    layers: bool = False  # lnrepro-profile prints the per-layer table
    onnx: bool = False  # lnrepro-profile: also time the network exported to ONNX Runtime
    end_of_fit: bool = True  # train.py: measure the trained network after the fit
    guidelines: list[str] | None = None  # lnrepro-profile: ShuffleNet V2's guideline benchmarks instead
    guideline: dict[str, Any] = field(default_factory=dict)  # their options

    def __post_init__(self) -> None:
        for name, least in (("batch_size", 1), ("runs", 1), ("throughput_runs", 1), ("warmup", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise UserInputError(f"profile.{name}={value!r} is not possible: use an integer >= {least}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise UserInputError(f"profile.threads={self.threads!r} is not possible: use null or an integer >= 1")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> "ProfileSettings":
        """From the `profile` config node (a DictConfig or dict); an unknown key is refused in one line."""
        if config is None:
            return cls()
        if not isinstance(config, Mapping):
            from omegaconf import OmegaConf  # only when a DictConfig can have come in

            config = OmegaConf.to_container(config, resolve=True)
        values = dict(config)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise UserInputError(f"profile.{unknown[0]} is not a profile setting; the settings are: "
                                 f"{', '.join(sorted(fields))}")
        values["guidelines"] = list(values["guidelines"]) if values.get("guidelines") else None
        values["guideline"] = dict(values.get("guideline") or {})
        return cls(**values)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to `threads` inside the block (None: unchanged), restored after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def static_metrics(model: nn.Module, input_size: InputSize, macs: MacCount | None = None) -> dict[str, int]:
    """Parameters, multiply-adds, FLOPs (= 2 x multiply-adds) and memory access cost for one image.
    `macs`: `count_macs(model, input_size)` when the caller already has it (it is not counted twice)."""
    params = count_parameters(model)
    macs = macs or count_macs(model, input_size)
    return {
        schema.PARAMS: params.total,
        schema.PARAMS_TRAINABLE: params.trainable,
        schema.PARAMS_CONV: params.conv,
        schema.MACS: macs.macs,
        schema.MACS_CONV: macs.conv_macs,
        schema.FLOPS: macs.flops,
        schema.FLOPS_CONV: macs.conv_flops,
        schema.MAC_BYTES: macs.mac_bytes,
    }


LAYER_COLUMNS = ["layer", "type", "macs", "flops", "params", "output_shape", "mac_bytes"]


def layer_rows(macs: MacCount) -> list[list[Any]]:
    """The per-layer breakdown of `count_macs` as table rows under `LAYER_COLUMNS` (FLOPs = 2 x multiply-adds,
    output shape as "CxHxW", memory access cost in bytes, 0 for layers other than Conv2d/Linear)."""
    return [[layer.name, layer.type, layer.macs, 2 * layer.macs, layer.params,
             shape_text(layer.output_shape), layer.mac_bytes] for layer in macs.layers]


def measured_metrics(model: nn.Module, input_size: InputSize, settings: ProfileSettings | None = None,
                     training_speed: bool = True) -> dict[str, Any]:
    """What `settings` asks for, on the device and dtype where the model is, with `settings.threads`: latency at
    batch 1 (`runs` timed passes), inference throughput at `batch_size` (`throughput_runs` batches), peak memory of
    inference and, with `train`, of training (`memory/peak_mb` is training's peak when measured, else
    inference's), and, with `train` and `training_speed`, training throughput (a fit passes False: it measured
    its own)."""
    settings = settings or ProfileSettings()
    batch, runs, warmup = settings.batch_size, settings.throughput_runs, min(settings.warmup, 2)
    metrics: dict[str, Any] = {}
    with torch_threads(settings.threads):
        if settings.latency:
            one = latency(model, input_size, runs=settings.runs, warmup=settings.warmup)
            metrics[schema.LATENCY_MS], metrics[schema.LATENCY_P90_MS] = one.median_ms, one.p90_ms
        if settings.throughput:
            metrics[schema.INFER_IMGS_PER_S] = inference_throughput(
                model, batch, input_size, runs=runs, warmup=warmup).images_per_s
        if settings.train and training_speed:
            metrics[schema.TRAIN_IMGS_PER_S] = training_throughput(
                model, batch, input_size, runs=runs, warmup=warmup).images_per_s
        if settings.memory:
            metrics[schema.MEMORY_INFER_PEAK_MB] = inference_peak_memory(model, batch, input_size).peak_mb
            metrics[schema.MEMORY_PEAK_MB] = (training_peak_memory(model, batch, input_size).peak_mb
                                              if settings.train else metrics[schema.MEMORY_INFER_PEAK_MB])
        metrics.update(measurement_context(model, batch, input_size))
    return metrics


def profile_model(model: nn.Module, input_size: InputSize, settings: ProfileSettings | None = None,
                  macs: MacCount | None = None) -> dict[str, Any]:
    """`static_metrics` (with `macs` when the caller has counted them) and `measured_metrics` together."""
    return {**static_metrics(model, input_size, macs=macs), **measured_metrics(model, input_size, settings)}
