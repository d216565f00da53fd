"""Multiply-adds as papers count them: the counting convention is the most common complaint against every FLOP
counter (timm, mmpretrain and ShuffleNet-Series issues), so a profile can show all of them beside the published
figure and say which one it matches.

Conventions, each including the one before (one image, counted at torch's operator level, where functional adds,
SE's gating and the channel shuffle are visible, whatever module they sit in):

- `conv_linear`: convolutions and matrix products only (torch's FlopCounterMode / 2): MobileNet, ShuffleNet and
  GhostNet papers, torchvision's GFLOPS column;
- `with_norm`: plus one multiply-add per element of every batch-norm output (inference BN is a scale and a shift);
- `with_elementwise`: plus one operation per output element of every element-wise op (activations, residual and
  SE additions and multiplications, pooling: per output element per window element). The channel shuffle is a
  copy: it moves data and counts nothing.

FLOPs = 2 x multiply-adds under every convention.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from lnrepro.profiling.context import InputSize, random_input
from lnrepro.profiling.counts import evaluation_mode

CONVENTIONS = ("conv_linear", "with_norm", "with_elementwise")
#: A published figure within this fraction of a convention's count "matches" it (rounding in papers' tables).
MATCH_TOLERANCE = 0.03

_NORM_OPS = {
    "native_batch_norm",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit",
    "batch_norm",
    "cudnn_batch_norm",
    "miopen_batch_norm",
}
_ELEMENTWISE_OPS = {
    "relu",
    "relu_",
    "relu6",
    "hardtanh",
    "hardtanh_",
    "hardswish",
    "hardswish_",
    "hardsigmoid",
    "hardsigmoid_",
    "sigmoid",
    "sigmoid_",
    "silu",
    "silu_",
    "gelu",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_min_",
    "add",
    "add_",
    "mul",
    "mul_",
    "sub",
    "sub_",
    "div",
    "div_",
    "tanh",
    "leaky_relu",
}
_POOL_OPS = {
    "mean",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "max_pool2d",
    "max_pool2d_with_indices",
    "_adaptive_avg_pool2d",
}


class _ElementCounter(TorchDispatchMode):
    """Counts output elements of normalisation and element-wise aten ops, and input elements of pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = 0
        self.elementwise = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        first = out[0] if isinstance(out, (tuple, list)) else out
        if isinstance(first, torch.Tensor):
            if name in _NORM_OPS:
                self.norm += first.numel()
            elif name in _ELEMENTWISE_OPS:
                self.elementwise += first.numel()
            elif name in _POOL_OPS and args and isinstance(args[0], torch.Tensor):
                self.elementwise += args[0].numel()  # every input element enters one sum or comparison
        return out


def count_conventions(model: nn.Module, input_size: InputSize) -> dict[str, int]:
    """Multiply-adds of one image under each of `CONVENTIONS`."""
    with evaluation_mode(model), torch.no_grad():
        images = random_input(model, 1, input_size)
        flops = FlopCounterMode(display=False)
        elements = _ElementCounter()
        with flops, elements:
            model(images)
    conv_linear = flops.get_total_flops() // 2
    return {
        "conv_linear": conv_linear,
        "with_norm": conv_linear + elements.norm,
        "with_elementwise": conv_linear + elements.norm + elements.elementwise,
    }


def matching_convention(counts: dict[str, int], published_macs: float | None) -> str | None:
    """The convention whose count is closest to the published multiply-adds, if within `MATCH_TOLERANCE`."""
    if not published_macs:
        return None
    name = min(counts, key=lambda c: abs(counts[c] - published_macs))
    return name if math.isclose(counts[name], published_macs, rel_tol=MATCH_TOLERANCE) else None


def convention_rows(counts: dict[str, int], published_macs: float | None) -> list[dict[str, Any]]:
    """One row per convention: multiply-adds, FLOPs, the ratio to the published figure, whether it matches."""
    match = matching_convention(counts, published_macs)
    return [
        {
            "convention": name,
            "macs": counts[name],
            "flops": 2 * counts[name],
            "vs_published": counts[name] / published_macs if published_macs else None,
            "matches": name == match,
        }
        for name in CONVENTIONS
    ]
