"""All measurements of one network as one flat dict, under the stable keys of metrics.json."""

from __future__ import annotations

from typing import Any

from torch import nn

from lnrepro.profiling.context import InputSize, measurement_context, shape_text
from lnrepro.profiling.counts import MacCount, count_macs, count_parameters
from lnrepro.profiling.memory import inference_peak_memory, training_peak_memory
from lnrepro.profiling.timing import inference_throughput, latency, training_throughput


def static_metrics(model: nn.Module, input_size: InputSize, macs: MacCount | None = None) -> dict[str, int]:
    """Parameters, multiply-adds, FLOPs (= 2 x multiply-adds) and memory access cost for one image.
    `macs`: `count_macs(model, input_size)` when the caller already has it (it is not counted twice)."""
    params = count_parameters(model)
    macs = macs or count_macs(model, input_size)
    return {
        "params": params.total,
        "params_trainable": params.trainable,
        "params_conv": params.conv,
        "macs": macs.macs,
        "macs_conv": macs.conv_macs,
        "flops": macs.flops,
        "flops_conv": macs.conv_flops,
        "mac_bytes": macs.mac_bytes,
    }


LAYER_COLUMNS = ["layer", "type", "macs", "flops", "params", "output_shape", "mac_bytes"]


def layer_rows(macs: MacCount) -> list[list[Any]]:
    """The per-layer breakdown of `count_macs` as table rows under `LAYER_COLUMNS` (FLOPs = 2 x multiply-adds,
    output shape as "CxHxW", memory access cost in bytes, 0 for layers other than Conv2d/Linear)."""
    return [[layer.name, layer.type, layer.macs, 2 * layer.macs, layer.params,
             shape_text(layer.output_shape), layer.mac_bytes] for layer in macs.layers]


def measured_metrics(model: nn.Module, input_size: InputSize, batch_size: int, runs: int = 50, warmup: int = 5,
                     train: bool = True, memory: bool = True) -> dict[str, Any]:
    """Latency at batch 1 (`runs` timed passes), inference throughput at `batch_size` (runs // 5, at least 3),
    and, with `train`, training throughput; with `memory`, peak memory of inference and (with `train`) of
    training. `memory/peak_mb` is training's peak when measured, else inference's."""
    batch_runs = max(3, runs // 5)
    one = latency(model, input_size, runs=runs, warmup=warmup)
    metrics: dict[str, Any] = {
        "latency_ms": one.median_ms,
        "latency_p90_ms": one.p90_ms,
        "infer/imgs_per_s": inference_throughput(model, batch_size, input_size, runs=batch_runs,
                                                 warmup=min(warmup, 2)).images_per_s,
    }
    if train:
        metrics["train/imgs_per_s"] = training_throughput(model, batch_size, input_size, runs=batch_runs,
                                                          warmup=min(warmup, 2)).images_per_s
    if memory:
        metrics["memory/infer_peak_mb"] = inference_peak_memory(model, batch_size, input_size).peak_mb
        metrics["memory/peak_mb"] = (training_peak_memory(model, batch_size, input_size).peak_mb if train
                                     else metrics["memory/infer_peak_mb"])
    metrics.update(measurement_context(model, batch_size, input_size))
    return metrics


def profile_model(model: nn.Module, input_size: InputSize, batch_size: int, runs: int = 50, warmup: int = 5,
                  train: bool = True, memory: bool = True, macs: MacCount | None = None) -> dict[str, Any]:
    """`static_metrics` (with `macs` when the caller has counted them) and `measured_metrics` together, on the
    device and dtype where the model is."""
    return {**static_metrics(model, input_size, macs=macs),
            **measured_metrics(model, input_size, batch_size, runs, warmup, train, memory)}
