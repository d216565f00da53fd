"""Shared helpers: input shapes, devices, synchronisation, and the context every measured figure carries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

InputSize = int | Sequence[int]


def input_shape(input_size: InputSize, channels: int = 3) -> tuple[int, int, int]:
    """(C, H, W) from an image side (square, `channels` channels) or from an explicit (C, H, W) / (H, W)."""
    if isinstance(input_size, int):
        return (channels, input_size, input_size)
    size = tuple(int(s) for s in input_size)
    if len(size) == 2:
        return (channels, *size)
    if len(size) == 3:
        return size
    raise ValueError(f"input_size must be an int, (H, W) or (C, H, W); got {input_size!r}")


def shape_text(shape: Sequence[int]) -> str:
    """(3, 224, 224) -> '3x224x224', the form metrics.json and tables use."""
    return "x".join(str(s) for s in shape)


def model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def random_input(model: nn.Module, batch_size: int, input_size: InputSize) -> torch.Tensor:
    """A random batch of `input_size` images on the model's device and in its dtype."""
    return torch.randn(batch_size, *input_shape(input_size), device=model_device(model), dtype=model_dtype(model))


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work: GPU kernels run asynchronously, so a timer read without this
    measures only how fast Python queued them. A no-op on the CPU."""
    device = torch.device(device)
    # torch.accelerator covers every backend (CUDA, MPS, XPU, ...) but raises where none is usable, and a CUDA
    # build reports CUDA as its accelerator even on a machine without a GPU: ask only for the usable one.
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if accelerator is not None and device.type == accelerator.type:
        torch.accelerator.synchronize(device)


def measurement_context(model: nn.Module, batch_size: int, input_size: InputSize) -> dict[str, Any]:
    """What a timing or memory figure depends on besides the network: device, dtype, CPU threads,
    batch size, input size (CxHxW) and torch version."""
    device = model_device(model)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {
        "device": name,
        "dtype": str(model_dtype(model)).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "batch_size": int(batch_size),
        "input_size": shape_text(input_shape(input_size)),
        "torch_version": torch.__version__,
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, interpolating linearly between the two nearest samples
    (numpy's default), so that p50 is the median."""
    ordered = sorted(float(v) for v in values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
