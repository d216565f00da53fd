"""Indirect efficiency metrics: parameters, multiply-adds / FLOPs and memory access cost.

All three are properties of the network and the input size alone. Multiply-adds and memory access cost are
counted for ONE image (batch 1) by running a forward pass in eval mode under `torch.no_grad()` (eval mode, so
BatchNorm statistics are untouched; the caller's train/eval mode is restored afterwards).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lnrepro.profiling.context import InputSize, model_dtype, random_input

#: Layers whose memory access cost is counted (ShuffleNet V2 defines MAC for convolutions; a linear layer is a
#: 1x1 convolution on a 1x1 map). BatchNorm, activations, pooling, concatenation and shuffles are left out.
MAC_LAYERS = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class ParameterCount:
    total: int  # every parameter (weights, biases, BatchNorm affine), trainable or not
    trainable: int  # those with requires_grad
    conv: (
        int  # weights and biases of nn.Conv2d layers only (depthwise and grouped included), as the ghost_vs_dwpw table
    )


def count_parameters(model: nn.Module) -> ParameterCount:
    """Parameters of `model`. Shared tensors are counted once; buffers (BatchNorm running statistics) never."""
    unique = {id(p): p for p in model.parameters()}.values()
    conv_params = {id(p): p for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters(recurse=False)}
    return ParameterCount(
        total=sum(p.numel() for p in unique),
        trainable=sum(p.numel() for p in unique if p.requires_grad),
        conv=sum(p.numel() for p in conv_params.values()),
    )


@dataclass(frozen=True)
class LayerCost:
    """One leaf module (a module without children) of the forward pass, for one image."""

    name: str  # qualified name in the model, e.g. "features.3.conv.0.0"
    type: str  # class name, e.g. "Conv2d"
    macs: int  # multiply-adds inside this module (FLOPs / 2)
    params: int  # its own parameters
    output_shape: tuple[int, ...]
    mac_bytes: int = 0  # memory access cost (Conv2d / Linear only, 0 for others)
    is_conv: bool = False  # an nn.Conv2d (its multiply-adds count as conv multiply-adds)


@dataclass(frozen=True)
class MacCount:
    """Multiply-adds of one forward pass of one image.

    `macs` counts what torch's FlopCounterMode counts, halved: convolutions (B x Cout x Hout x Wout x Cin/groups x
    kH x kW multiply-adds), linear layers and matrix products (addmm/mm/bmm, attention). Bias additions,
    BatchNorm, activations, pooling, element-wise operations and concatenations are NOT counted, which is the
    convention of the papers (and of torchvision's published "GFLOPS", which are multiply-adds).
    `flops` = 2 x `macs`: one multiply-add is two floating-point operations.
    """

    macs: int
    conv_macs: int  # the part inside nn.Conv2d layers
    layers: list[LayerCost] = field(default_factory=list)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def conv_flops(self) -> int:
        return 2 * self.conv_macs

    @property
    def mac_bytes(self) -> int:
        """Memory access cost of the whole pass, in bytes, at the model's element size (ShuffleNet V2, Sec. 2, G1):
        for every nn.Conv2d and nn.Linear layer, the elements of its input feature map + its output feature map + its
        weights and bias. Other layers (BatchNorm, activations, pooling, concatenation, shuffles) are not counted, as
        in the paper; each layer's share is its row's `mac_bytes`."""
        return sum(layer.mac_bytes for layer in self.layers)


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no autograd for a measurement; the model's previous mode comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name or type(model).__name__, module)
        for name, module in model.named_modules()
        if not any(True for _ in module.children())
    ]


def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _mac_bytes(module: nn.Module, inputs, output, bytes_per_element: int) -> int:
    """ShuffleNet V2's memory access cost of one layer: input and output feature maps plus its weights."""
    if not isinstance(module, MAC_LAYERS):
        return 0
    feature_in, feature_out = _first_tensor(inputs), _first_tensor(output)
    elements = sum(p.numel() for p in module.parameters(recurse=False))
    elements += (feature_in.numel() if feature_in is not None else 0) + (
        feature_out.numel() if feature_out is not None else 0
    )
    return elements * bytes_per_element


def _profile_layers(model: nn.Module, input_size: InputSize, bytes_per_element: int) -> tuple[int, list[LayerCost]]:
    """One forward pass of one image under FlopCounterMode, with hooks on every leaf module.

    A module's multiply-adds are the growth of the counter's total between its pre-hook and its hook: this
    attributes every counted operation to the innermost module that ran it, without relying on the counter's
    module-name bookkeeping.
    """
    counter = FlopCounterMode(display=False)
    layers: list[LayerCost] = []
    started: dict[int, int] = {}
    handles = []

    def before(module, inputs):
        started[id(module)] = counter.get_total_flops()

    def after(name):
        def hook(module, inputs, output):
            flops = counter.get_total_flops() - started.pop(id(module))
            out = _first_tensor(output)
            layers.append(
                LayerCost(
                    name=name,
                    type=type(module).__name__,
                    macs=flops // 2,
                    params=sum(p.numel() for p in module.parameters(recurse=False)),
                    output_shape=tuple(out.shape[1:]) if out is not None else (),
                    mac_bytes=_mac_bytes(module, inputs, output, bytes_per_element),
                    is_conv=isinstance(module, nn.Conv2d),
                )
            )

        return hook

    for name, module in _leaf_modules(model):
        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after(name)))
    try:
        with evaluation_mode(model), counter:
            model(random_input(model, 1, input_size))
    finally:
        for handle in handles:
            handle.remove()
    return counter.get_total_flops() // 2, layers


def count_macs(model: nn.Module, input_size: InputSize) -> MacCount:
    """Multiply-adds (and FLOPs = 2 x multiply-adds) of `model` on one image of `input_size` (side or (C, H, W)),
    total and inside nn.Conv2d layers, with a per-leaf-module breakdown in forward order (see `MacCount`).
    Work done by functional calls outside any leaf module (e.g. `x @ w` in a parent's forward) is in the total
    and in a last row named "(functional)". The rows' `mac_bytes` use the element size of the model's dtype."""
    element_size = torch.empty((), dtype=model_dtype(model)).element_size()
    total, layers = _profile_layers(model, input_size, bytes_per_element=element_size)
    in_layers = sum(layer.macs for layer in layers)
    if total > in_layers:
        layers.append(LayerCost("(functional)", "-", total - in_layers, 0, ()))
    conv = sum(layer.macs for layer in layers if layer.is_conv)
    return MacCount(macs=total, conv_macs=conv, layers=layers)
