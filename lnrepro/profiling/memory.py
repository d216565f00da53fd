"""Peak memory of inference and of training.

How it is measured:
- on a CUDA device: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, i.e. the most bytes held
  by tensors at any moment (weights included), as PyTorch's allocator saw them; the allocator's cache is not.
- on the CPU, where PyTorch keeps no allocator statistics: the `[memory]` events of `torch.profiler` with
  `profile_memory=True`, which record every allocation and free of PyTorch's CPU allocator (c10) in time
  order. Their running sum, at its maximum, is the peak of tensors made during the measured step; added to
  the bytes of the model's parameters and buffers (allocated before the step) it gives the same quantity as
  on a GPU. Scratch memory that oneDNN/BLAS allocate outside PyTorch's allocator is not included; the Python
  process's RSS is not used (it is a high-water mark of everything, and never goes down).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lnrepro.profiling.context import InputSize, measurement_context, model_device, random_input, synchronize
from lnrepro.profiling.counts import evaluation_mode
from lnrepro.profiling.timing import train_step_fn

MIB = 2**20


@dataclass(frozen=True)
class PeakMemory:
    peak_mib: float  # MiB (2**20 bytes)
    method: str  # "cuda.max_memory_allocated" or "torch.profiler"
    context: dict[str, Any]


def _resident_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def _profiled_peak_bytes(run: Callable[[], None]) -> int:
    """Peak of the running sum of the CPU allocator's allocations and frees while `run` runs."""
    from torch.profiler import ProfilerActivity, profile

    # Kineto's own start/stop log lines are noise here.
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = [
        event
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and str(event.device_type()).endswith("CPU")
    ]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def _peak(model: nn.Module, run: Callable[[], None]) -> tuple[float, str]:
    device = model_device(model)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) / MIB, "cuda.max_memory_allocated"
    return (_resident_bytes(model) + _profiled_peak_bytes(run)) / MIB, "torch.profiler"


def inference_peak_memory(model: nn.Module, batch_size: int, input_size: InputSize) -> PeakMemory:
    """Peak memory of one forward pass at `batch_size` in eval mode under no_grad (input included), weights
    included; see the module docstring for how. The model's train/eval mode is restored."""

    def forward() -> None:
        model(random_input(model, batch_size, input_size))  # made inside, so the input counts in the peak

    with evaluation_mode(model):
        model(random_input(model, 1, input_size))  # lazy init
        peak, method = _peak(model, forward)
    return PeakMemory(peak, method, measurement_context(model, batch_size, input_size))


def training_peak_memory(model: nn.Module, batch_size: int, input_size: InputSize) -> PeakMemory:
    """Peak memory of two training steps at `batch_size` (forward, backward, SGD with momentum; the batch,
    activations kept for backward, gradients and optimizer state included; weights included), measured on a
    deep copy of the model so the caller's weights are untouched; see the module docstring for how."""
    model = copy.deepcopy(model).train()

    def two_steps() -> None:
        step = train_step_fn(model, batch_size, input_size)
        step()
        step()

    peak, method = _peak(model, two_steps)
    return PeakMemory(peak, method, measurement_context(model, batch_size, input_size))
