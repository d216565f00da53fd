"""Direct efficiency metrics measured with a clock: latency and throughput.

Every function runs on the device and in the dtype where the model's parameters are (pass `device` to move the
model there first; `nn.Module.to` moves it in place). Timers read `time.perf_counter()` after synchronising the
device, so queued GPU work is included. Inputs are random tensors made once, before timing. `latency` and
`inference_throughput` time the model's own forward pass (eager PyTorch) or, given `run`, the same model prepared
in another runtime (`lnrepro.profiling.runtimes`): one way of timing for every runtime.

`torch.utils.benchmark.Timer` is not used: its measurements average blocks of calls, where a batch-1 latency needs
every pass timed on its own for a median and a 90th percentile (the contention flag reads the p90), and it runs with
its own thread count (1 unless told), where the profile's `threads` must hold for every runtime.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lnrepro.profiling.context import (
    InputSize,
    measurement_context,
    model_device,
    percentile,
    random_input,
    synchronize,
)
from lnrepro.profiling.counts import evaluation_mode


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p90_ms: float
    runs: int
    context: dict[str, Any]


@dataclass(frozen=True)
class Throughput:
    images_per_s: float
    context: dict[str, Any]


def _placed(model: nn.Module, device: torch.device | str | None) -> nn.Module:
    return model if device is None or torch.device(device) == model_device(model) else model.to(device)


def time_calls(step: Callable[[], Any], device: torch.device, runs: int, warmup: int) -> list[float]:
    """Seconds of each of `runs` calls of `step`, after `warmup` untimed calls (allocator growth, cuDNN/oneDNN
    kernel selection and lazy initialisation happen in the first calls)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


#: What is timed on a batch of images: the model itself, or a runtime's runner of it (`runtimes.prepare`).
Forward = Callable[[torch.Tensor], Any]


def _forward_seconds(
    model: nn.Module, batch_size: int, input_size: InputSize, runs: int, warmup: int, run: Forward | None
) -> list[float]:
    """Seconds of each of `runs` passes of `run` (default: the model's forward) on one random batch, in eval mode
    under no_grad, after `warmup` passes; the model's train/eval mode is restored."""
    images = random_input(model, batch_size, input_size)
    forward = run or model
    with evaluation_mode(model):
        return time_calls(lambda: forward(images), model_device(model), runs, warmup)


def latency(
    model: nn.Module,
    input_size: InputSize,
    device: torch.device | str | None = None,
    runs: int = 50,
    warmup: int = 5,
    run: Forward | None = None,
) -> Latency:
    """Inference latency of one image (batch 1): median and 90th percentile over `runs` forward passes in eval
    mode under no_grad, after `warmup` passes, in milliseconds. The model's train/eval mode is restored. `run`:
    what is timed instead of the model's forward, e.g. the model prepared in another runtime."""
    model = _placed(model, device)
    ms = [1000 * s for s in _forward_seconds(model, 1, input_size, runs, warmup, run)]
    return Latency(percentile(ms, 50), percentile(ms, 90), runs, measurement_context(model, 1, input_size))


def quiet_latency_ms(
    model: nn.Module,
    input_size: InputSize,
    blocks: int = 5,
    runs: int = 10,
    warmup: int = 5,
    run: Forward | None = None,
) -> float:
    """The least of `blocks` batch-1 medians of `runs` passes each (after `warmup` passes before the first): the
    latency of a quiet machine. On a shared host a neighbour's burst slows everything for seconds (GhostNet x0.75 at
    32x32 in ONNX Runtime read 1.03-1.81 ms in consecutive 50-pass medians on this project's EPYC), and it only ever
    makes a block slower, so the best block is the repeatable figure (as the roofline's peaks are the best block).
    What the latency predictor is fitted on and checked against; `latency` stays the figure a profile reports."""
    best = math.inf
    for block in range(blocks):
        best = min(best, latency(model, input_size, runs=runs, warmup=warmup if block == 0 else 1, run=run).median_ms)
    return best


def inference_throughput(
    model: nn.Module,
    batch_size: int,
    input_size: InputSize,
    device: torch.device | str | None = None,
    runs: int = 10,
    warmup: int = 2,
    run: Forward | None = None,
) -> Throughput:
    """Images per second of forward passes at `batch_size` in eval mode under no_grad: batch_size x runs
    images over the summed time of the `runs` timed passes (after `warmup` passes). `run`: as for `latency`."""
    model = _placed(model, device)
    seconds = _forward_seconds(model, batch_size, input_size, runs, warmup, run)
    return Throughput(batch_size * runs / sum(seconds), measurement_context(model, batch_size, input_size))


def train_step_fn(model: nn.Module, batch_size: int, input_size: InputSize) -> Callable[[], None]:
    """One training step on a fixed random batch: forward, cross-entropy against random labels, backward, SGD
    step with momentum 0.9 (the optimizer and its state are created here, the state on the first step)."""
    images = random_input(model, batch_size, input_size)
    with evaluation_mode(model):
        num_classes = model(images[:1]).shape[-1]
    labels = torch.randint(0, num_classes, (batch_size,), device=images.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def training_throughput(
    model: nn.Module,
    batch_size: int,
    input_size: InputSize,
    device: torch.device | str | None = None,
    runs: int = 5,
    warmup: int = 2,
) -> Throughput:
    """Images per second of training steps (forward + backward + SGD step, see `train_step_fn`) at
    `batch_size`, in train mode. It trains a deep copy of the model, so the caller's weights, BatchNorm
    statistics and optimizer are untouched (the copy costs the model's memory once more)."""
    model = copy.deepcopy(_placed(model, device)).train()
    step = train_step_fn(model, batch_size, input_size)
    seconds = time_calls(step, model_device(model), runs, warmup)
    return Throughput(batch_size * runs / sum(seconds), measurement_context(model, batch_size, input_size))
