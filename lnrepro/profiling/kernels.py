"""A network as a latency predictor sees it: its compute kernels (convolutions and fully connected layers, each with
its shape) and the rest of its operators ("glue": activations, additions, concatenations, shuffles, pooling), counted
by kind with the bytes they move.

The same `KernelShape` describes a kernel from both sides: from the torch calls of a forward pass (`describe`, what a
prediction starts from, with nothing exported or run in a runtime) and from a runtime's own per-layer profile
(`lnrepro.profiling.layer_times` fills `LayerTime.shape` from ONNX Runtime's nodes and XNNPACK's graph), what a
predictor is fitted on. Channels are the logical ones in both: ONNX Runtime's NCHWc layout pads activations, not the
weights the shape is read from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from lnrepro.profiling.context import InputSize
from lnrepro.profiling.counts import OperatorCost, count_operators

#: Kernels a predictor models one by one, each kind with its own regressor (the kinds of `layer_times.KINDS`).
COMPUTE_KINDS = ("conv1x1", "depthwise", "grouped", "conv", "linear")

#: The operators between the compute kernels, by torch function, in groups that a runtime treats alike: a clamp-like
#: activation is folded into the convolution before it by ONNX Runtime and XNNPACK, a hard-swish is not, BatchNorm
#: is folded by both and is its own operator in eager PyTorch. A predictor learns what each group costs per call and
#: per byte in each runtime, fusion included (a folded group costs nothing), from whole networks' latencies.
GLUE_GROUPS = {
    "clamp": ("relu", "relu_", "relu6", "hardtanh", "hardtanh_", "clamp", "clamp_", "threshold", "leaky_relu"),
    "activation": (
        "hardswish",
        "hardswish_",
        "hardsigmoid",
        "hardsigmoid_",
        "sigmoid",
        "sigmoid_",
        "silu",
        "silu_",
        "gelu",
        "tanh",
        "softmax",
    ),
    "add": ("add", "add_", "__add__", "__iadd__", "__radd__", "sub", "__sub__"),
    "mul": ("mul", "mul_", "__mul__", "__imul__", "__rmul__", "div", "__truediv__"),
    "movement": (
        "cat",
        "concat",
        "stack",
        "transpose",
        "permute",
        "reshape",
        "view",
        "flatten",
        "contiguous",
        "chunk",
        "split",
        "__getitem__",
        "pad",
        "channel_shuffle",
        "narrow",
    ),
    # windowed pooling, average and max apart: ExecuTorch runs ShuffleNet V1's 3x3 average shortcut outside XNNPACK
    # as a portable kernel (3 of them are 11 ms of its 15 ms there) and the ImageNet stems' max pool inside
    "avg_pool": ("avg_pool2d",),
    "max_pool": ("max_pool2d", "max_pool2d_with_indices"),
    "global_pool": ("adaptive_avg_pool2d", "adaptive_max_pool2d", "mean"),  # the head's, and squeeze-and-excitation's
    "norm": ("batch_norm",),
}
_GLUE_OF = {op: group for group, ops in GLUE_GROUPS.items() for op in ops}
GLUE_NAMES = (*GLUE_GROUPS, "other")


def glue_group(op: str) -> str:
    """The glue group of a torch function's name (`F.relu` -> clamp), "other" for anything else."""
    return _GLUE_OF.get(op, "other")


@dataclass(frozen=True)
class KernelShape:
    """One compute kernel at batch `batch`: kind (`COMPUTE_KINDS`), logical channels, square kernel side, stride,
    groups, output height and width (1 x 1 for a fully connected layer), multiply-adds and bytes moved per call."""

    kind: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    height: int
    width: int
    macs: int
    bytes: int
    batch: int = 1

    def as_list(self) -> list[Any]:
        return list(asdict(self).values())

    @classmethod
    def from_list(cls, values: Sequence[Any]) -> KernelShape:
        return cls(*values)


def conv_shape(
    kind: str,
    input_hw: tuple[int, int],
    output: tuple[int, int, int],
    weight: Sequence[int],
    groups: int,
    macs: int,
    moved: int,
    batch: int = 1,
) -> KernelShape:
    """A convolution's shape from its input's (H, W), its output's (C, H, W) and its weight's (out, in / groups,
    kH, kW) shape; the stride is the input's height over the output's, as padding 'same' gives it."""
    stride = max(1, round(input_hw[0] / max(1, output[1])))
    return KernelShape(
        kind,
        int(weight[1]) * groups,
        int(output[0]),
        int(weight[2]),
        stride,
        groups,
        output[1],
        output[2],
        macs,
        moved,
        batch,
    )


def linear_shape(in_features: int, out_features: int, macs: int, moved: int, batch: int = 1) -> KernelShape:
    return KernelShape("linear", in_features, out_features, 1, 1, 1, 1, 1, macs, moved, batch)


def torch_kernel(op: OperatorCost) -> KernelShape | None:
    """The kernel of one torch call of a forward pass (`counts.count_operators`), None for any other operator."""
    from lnrepro.profiling.layer_times import conv_kind

    if op.op == "conv2d" and len(op.input_shapes) >= 2 and len(op.input_shapes[0]) == 4:
        image, weight = op.input_shapes[0], op.input_shapes[1]
        groups = max(1, image[1] // weight[1]) if weight[1] else 1
        out = op.output_shapes[0]
        return conv_shape(
            conv_kind(groups, weight),
            (image[2], image[3]),
            tuple(out[1:4]),
            weight,
            groups,
            op.macs,
            op.bytes_moved,
            image[0],
        )
    if op.op == "linear" and len(op.input_shapes) >= 2:
        image, weight = op.input_shapes[0], op.input_shapes[1]
        return linear_shape(weight[1], weight[0], op.macs, op.bytes_moved, math.prod(image[:-1]) or 1)
    return None


@dataclass(frozen=True)
class NetworkDescription:
    """What a prediction needs of a network at one input size (batch 1): its compute kernels and, per torch function
    of the rest, the number of calls and the bytes they move (grouped by `GLUE_GROUPS` when predicting, so that a
    regrouping applies to networks measured before it)."""

    kernels: list[KernelShape]
    glue_ops: dict[str, tuple[int, int]]  # torch function -> (calls, bytes moved)

    def _by_group(self, field: int) -> dict[str, int]:
        totals = dict.fromkeys(GLUE_NAMES, 0)
        for op, counts in self.glue_ops.items():
            totals[glue_group(op)] += counts[field]
        return totals

    @property
    def glue_calls(self) -> dict[str, int]:
        return self._by_group(0)

    @property
    def glue_bytes(self) -> dict[str, int]:
        return self._by_group(1)

    def to_json(self) -> dict[str, Any]:
        return {"kernels": [kernel.as_list() for kernel in self.kernels], "glue_ops": self.glue_ops}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkDescription:
        return cls(
            [KernelShape.from_list(values) for values in data["kernels"]],
            {op: (int(calls), int(size)) for op, (calls, size) in data["glue_ops"].items()},
        )


def describe_operators(operators: Iterable[OperatorCost]) -> NetworkDescription:
    kernels: list[KernelShape] = []
    glue: dict[str, tuple[int, int]] = {}
    for op in operators:
        kernel = torch_kernel(op)
        if kernel is not None:
            kernels.append(kernel)
            continue
        calls, moved = glue.get(op.op, (0, 0))
        glue[op.op] = (calls + 1, moved + op.bytes_moved)
    return NetworkDescription(kernels, glue)


def describe(model: nn.Module, input_size: InputSize) -> NetworkDescription:
    """`model`'s kernels and glue for one image of `input_size`, from one forward pass on the CPU in eval mode
    (`counts.count_operators`): no runtime is prepared or run."""
    return describe_operators(count_operators(model, input_size))


def paired_rows(
    kernels: Sequence[KernelShape], rows: Iterable[tuple[KernelShape, float]]
) -> tuple[list[tuple[KernelShape, float]], int]:
    """A runtime's kernel rows with the logical shapes of the network's own kernels, and how many rows could not be
    paired. ONNX Runtime reports a blocked (NCHWc) convolution with its weight padded to the block (12 output
    channels run as 16), which no torch-side description of a network has: a predictor is fitted on what it will be
    given. Kernels and rows are paired within each (kind, kernel, stride, output size) by channel order, which
    padding keeps; a group whose counts differ keeps no rows."""

    def group(kernel: KernelShape) -> tuple:
        return kernel.kind, kernel.kernel, kernel.stride, kernel.height, kernel.width

    def order(kernel: KernelShape) -> tuple:
        return kernel.out_channels, kernel.in_channels, kernel.groups

    mine: dict[tuple, list[KernelShape]] = {}
    for kernel in kernels:
        mine.setdefault(group(kernel), []).append(kernel)
    theirs: dict[tuple, list[tuple[KernelShape, float]]] = {}
    for kernel, ms in rows:
        theirs.setdefault(group(kernel), []).append((kernel, ms))
    paired, unpaired = [], 0
    for key, measured in theirs.items():
        logical = mine.get(key, [])
        if len(logical) != len(measured):
            unpaired += len(measured)
            continue
        measured = sorted(measured, key=lambda row: order(row[0]))
        paired += [(kernel, ms) for kernel, (_, ms) in zip(sorted(logical, key=order), measured)]
    return paired, unpaired
