"""Indirect efficiency metrics: parameters, multiply-adds / FLOPs, memory access cost and bytes moved.

All are properties of the network and the input size alone. Multiply-adds and memory access cost are
counted for ONE image (batch 1) by running a forward pass in eval mode under `torch.no_grad()` (eval mode, so
BatchNorm statistics are untouched; the caller's train/eval mode is restored afterwards). `count_operators` breaks
the same pass down by operator call, with the bytes every operator moves (`moved_bytes`), data movement and
element-wise operators included; `OperatorTracer` walks those calls, and times them for the per-layer timing
(`lnrepro.profiling.layer_times`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
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


# --- per operator: multiply-adds and bytes moved of every call ----------------------------------------------------
def moved_bytes(inputs: Iterable[tuple[int, int]], outputs: Iterable[tuple[int, int]]) -> int:
    """Bytes an operator moves: every tensor it reads (its inputs, weights and biases included) plus every tensor it
    writes, each as (elements, bytes per element). The one definition of "bytes moved" for every operator of every
    runtime: a convolution, a concatenation (its inputs + its output), a channel shuffle's copy and an element-wise
    add alike. An operator that writes nothing (a view, a reshape that aliases its input) moves nothing: give it no
    outputs and it counts 0. ShuffleNet V2's memory access cost (`mac_bytes`) is this count for conv and linear
    layers only."""
    written = [elements * size for elements, size in outputs]
    if not written:
        return 0
    return sum(elements * size for elements, size in inputs) + sum(written)


@dataclass(frozen=True)
class OperatorCost:
    """One torch call made by the network's own Python code in a forward pass of one image (a call made inside
    another torch call is part of that call: `F.batch_norm` is one operator, not the kernels it dispatches to)."""

    module: str  # qualified name of the innermost module running it ("" for the model's own forward)
    module_type: str  # that module's class name
    op: str  # the torch function, e.g. "conv2d", "batch_norm", "cat", "__getitem__", "mul"
    macs: int  # multiply-adds (torch's FlopCounterMode / 2: convolutions and matrix products only)
    bytes_moved: int  # `moved_bytes` at the tensors' element sizes
    input_shapes: tuple[tuple[int, ...], ...]  # every tensor argument in order, a list's tensors in place
    output_shapes: tuple[tuple[int, ...], ...]
    in_place: bool = False  # it wrote into one of its inputs (e.g. ReLU(inplace=True))


@dataclass
class TracedCall:
    """A call as `OperatorTracer` saw it: where and what, its wall time when timed, its cost when counted."""

    module: str
    module_type: str
    op: str
    seconds: float | None = None
    cost: OperatorCost | None = None


def _tensors(value: Any) -> list[torch.Tensor]:
    return [leaf for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor)]


def _function_name(func: Any) -> str:
    return getattr(func, "__name__", None) or str(func)


class OperatorTracer(TorchFunctionMode):
    """Every torch call the network's own code makes, in order, with the innermost module that made it.

    Neither torch.profiler nor FlopCounterMode serves here: the profiler records no output shapes and not the
    tensors of a list argument (torch.cat's inputs), so it cannot say what a concatenation or a split moves, and the
    flop counter sees only the arithmetic. A TorchFunctionMode sees each call of the network's Python code with its
    tensors, once (calls made inside a call run with the mode switched off).

    `count=True`: each call's multiply-adds (a FlopCounterMode around the pass) and bytes moved (run it under
    torch.no_grad, not inference_mode: an in-place write is told from a no-op by the tensor's version counter).
    `clock=True`: each call's wall time, `time.perf_counter` around the call alone (the mode's own bookkeeping is
    outside the timed span). Use it as a context manager around forward passes; `calls` grows by one entry per
    operator call.
    """

    def __init__(self, model: nn.Module, count: bool = False, clock: bool = False) -> None:
        super().__init__()
        self.count, self.clock = count, clock
        self.calls: list[TracedCall] = []
        self._model = model
        self._stack: list[tuple[str, str]] = [("", type(model).__name__)]
        self._hooks: list[Any] = []
        self._flops: FlopCounterMode | None = None

    def __enter__(self) -> OperatorTracer:
        def enter(name: str, module: nn.Module):
            def hook(_module, _inputs) -> None:  # None: the inputs stay as they are
                self._stack.append((name, type(module).__name__))

            return hook

        def leave(_module, _inputs, _output) -> None:  # None: a forward hook's result would replace the output
            self._stack.pop()

        for name, module in self._model.named_modules():
            if name:  # the model itself is the bottom of the stack
                self._hooks.append(module.register_forward_pre_hook(enter(name, module)))
                self._hooks.append(module.register_forward_hook(leave))
        if self.count:
            self._flops = FlopCounterMode(display=False)
            self._flops.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        if self._flops is not None:
            self._flops.__exit__(*exc)
            self._flops = None
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.count and not self.clock:
            return func(*args, **kwargs)
        inputs = _tensors((args, kwargs)) if self.count else []
        versions = [t._version for t in inputs]
        flops_before = self._flops.get_total_flops() if self._flops is not None else 0
        start = time.perf_counter()
        result = func(*args, **kwargs)
        seconds = time.perf_counter() - start
        outputs = _tensors(result)
        if not outputs and not isinstance(result, torch.Tensor):
            return result  # a size, a dtype, a flag: not an operator
        module, module_type = self._stack[-1]
        call = TracedCall(module, module_type, _function_name(func), seconds if self.clock else None)
        if self.count:
            macs = (self._flops.get_total_flops() - flops_before) // 2 if self._flops is not None else 0
            call.cost = _operator_cost(call, macs, inputs, versions, outputs)
        self.calls.append(call)
        return result


def _operator_cost(
    call: TracedCall, macs: int, inputs: list[torch.Tensor], versions: list[int], outputs: list[torch.Tensor]
) -> OperatorCost:
    """The call's `OperatorCost`. An output that is one of the inputs was written in place when its version moved,
    else handed back untouched (`x.contiguous()` of a contiguous x); an output sharing an input's storage is a view.
    Neither of the latter two moves data."""
    written, in_place = [], False
    for output in outputs:
        same = next((i for i, tensor in enumerate(inputs) if tensor is output), None)
        if same is not None:
            if output._version != versions[same]:
                written.append(output)
                in_place = True
            continue
        storage = output.untyped_storage().data_ptr()
        if output.numel() and any(t.numel() and t.untyped_storage().data_ptr() == storage for t in inputs):
            continue  # a view of an input
        written.append(output)
    unique = list({id(t): t for t in inputs}.values())  # a tensor passed twice (x * x) is read once
    return OperatorCost(
        module=call.module,
        module_type=call.module_type,
        op=call.op,
        macs=int(macs),
        bytes_moved=moved_bytes(
            [(t.numel(), t.element_size()) for t in unique], [(t.numel(), t.element_size()) for t in written]
        ),
        input_shapes=tuple(tuple(t.shape) for t in inputs),
        output_shapes=tuple(tuple(t.shape) for t in outputs),
        in_place=in_place,
    )


def count_operators(model: nn.Module, input_size: InputSize) -> list[OperatorCost]:
    """Every operator call of a forward pass of one image of `input_size`, in order, with its multiply-adds and
    the bytes it moves (`OperatorCost`); eval mode under no_grad, the caller's mode restored. The multiply-adds sum
    to `count_macs(...).macs`."""
    tracer = OperatorTracer(model, count=True)
    images = random_input(model, 1, input_size)
    with evaluation_mode(model), tracer:
        model(images)
    return [call.cost for call in tracer.calls if call.cost is not None]
