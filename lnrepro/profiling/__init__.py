"""Efficiency measurements of any `nn.Module`, usable without training (torch only).

Indirect metrics (`counts`): parameters, multiply-adds and FLOPs (FLOPs = 2 x multiply-adds, everywhere in this
project), memory access cost. Direct metrics (`timing`, `memory`): latency at batch 1, inference and training
throughput, peak memory. Every measured figure carries its context (device, dtype, threads, batch size, input
size, torch version). `profile_model` runs what `ProfileSettings` (the `profile` config group) asks for and
returns one flat dict under the keys of `lnrepro.schema`.
"""

from lnrepro.profiling.context import measurement_context, synchronize
from lnrepro.profiling.counts import (
    LayerCost,
    MacCount,
    ParameterCount,
    count_macs,
    count_parameters,
    evaluation_mode,
)
from lnrepro.profiling.measure import ProfileSettings, measured_metrics, profile_model, static_metrics
from lnrepro.profiling.memory import PeakMemory, inference_peak_memory, training_peak_memory
from lnrepro.profiling.timing import Latency, Throughput, inference_throughput, latency, training_throughput

__all__ = [
    "LayerCost",
    "Latency",
    "MacCount",
    "ParameterCount",
    "PeakMemory",
    "ProfileSettings",
    "Throughput",
    "count_macs",
    "count_parameters",
    "evaluation_mode",
    "inference_peak_memory",
    "inference_throughput",
    "latency",
    "measured_metrics",
    "measurement_context",
    "profile_model",
    "static_metrics",
    "synchronize",
    "training_peak_memory",
    "training_throughput",
]
