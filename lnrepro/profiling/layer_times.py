"""Where the time goes: each layer (or fused kernel) of a network timed in each runtime that can say it.

One row per operator as the runtime runs it, with its multiply-adds, the bytes it moves (`counts.moved_bytes`:
inputs, weights and outputs, data movement and element-wise operators included), its median time per call, and
where that puts it against the machine's roofline (`lnrepro.profiling.roofline`):

- `eager`: every torch call the network's Python code makes (`counts.OperatorTracer`), timed around the call. The
  Python between calls (module `__call__`, hooks, the interpreter) is in no row: the rows sum to what the operators
  cost, and `latency/eager_ms` minus that sum is eager PyTorch's framework overhead. BatchNorm is its own row.
- `onnxruntime`, `onnxruntime_int8`: ONNX Runtime's own profiler, one row per node of the graph it runs (after its
  graph optimisations, at the session options the timed runtime uses: fused convolutions, NCHWc layout reorders,
  int8 quantize/dequantize nodes). Multiply-adds and bytes come from the shapes the node ran on (NCHWc pads
  channels to the SIMD width, so a padded convolution counts the work it really does).
- `executorch`, `executorch_int8`: ExecuTorch's event tracer (ETDump), which this build fills with one event per
  XNNPACK operator inside the delegate (`executorch_layer_times`).
- `compiled` is not reported: inductor fuses operators of different layers into generated kernels, and no honest
  line joins a kernel's time to a layer.

`layer_times` runs the runtimes asked for, writes `layers/<runtime>.csv` (`COLUMNS`) and returns metrics.json's
`layers/<runtime>_sum_ms` beside the roofline's peaks.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lnrepro import schema
from lnrepro.errors import UserInputError, check_integer
from lnrepro.profiling.context import InputSize, input_shape, model_device, random_input
from lnrepro.profiling.counts import OperatorTracer, count_operators, evaluation_mode, moved_bytes
from lnrepro.profiling.exported import EXPORTED_FILES
from lnrepro.profiling.kernels import KernelShape, conv_shape, linear_shape, torch_kernel

log = logging.getLogger(__name__)

#: The operator kinds every runtime's rows are classed into, the one vocabulary of the tables and the report.
KINDS = {
    "conv1x1": "1x1 convolution, groups 1 (pointwise)",
    "depthwise": "convolution with one input channel per group (depthwise; GhostNet's cheap operation too)",
    "grouped": "grouped convolution with more than one input channel per group (ShuffleNet V1's 1x1 convs)",
    "conv": "dense kxk convolution, k > 1, groups 1",
    "linear": "fully connected layer or matrix product",
    "se": "any operator inside a squeeze-and-excitation module (pool, its 1x1 convs, gate, scale)",
    "concat_split_shuffle": "data movement: concat, split/slice, channel shuffle (reshape, transpose, copy), pad, "
    "layout reorders (ONNX Runtime's ReorderInput/ReorderOutput, XNNPACK's copies)",
    "elementwise": "element-wise arithmetic and activations not fused into a convolution (add, mul, ReLU, "
    "hard-sigmoid, ...)",
    "pool": "pooling and spatial means",
    "norm": "normalisation run on its own (eager BatchNorm; deployed runtimes fold it into the convolution)",
    "quantize": "int8 quantize/dequantize and conversions between number formats",
    "other": "anything else (e.g. eager's dropout in eval mode, a runtime's bookkeeping operator)",
}

#: The columns of layers/<runtime>.csv, in order. FLOPs = 2 x multiply-adds; GB = 1e9 bytes.
COLUMNS = (
    "name",  # the runtime's name for the layer or kernel (eager: module path / torch function)
    "kind",  # one of KINDS
    "op",  # the runtime's operator (torch function, ONNX operator type, XNNPACK operator)
    "macs",  # multiply-adds per call (empty where the runtime's event cannot be tied to shapes)
    "bytes",  # bytes moved per call (counts.moved_bytes at the runtime's element sizes; empty: as macs)
    "time_ms",  # median time per call over the profiled runs
    "intensity",  # FLOPs per byte moved
    "gflops",  # achieved GFLOP/s
    "gbps",  # achieved GB/s
    "bound_ms",  # the roofline's least time for this work: max(FLOPs / peak GFLOP/s, bytes / peak GB/s)
    "roofline_share",  # bound_ms / time_ms: 1 is as fast as the machine allows
)

#: Runtimes whose per-layer time can be measured, and the one that cannot (see the module's docstring).
LAYER_RUNTIMES = ("eager", "onnxruntime", "onnxruntime_int8", "executorch", "executorch_int8")
NOT_REPORTED = {"compiled": "inductor fuses operators of several layers into one generated kernel"}

#: Classes of squeeze-and-excitation modules, by name: profiling takes any nn.Module and imports no model zoo
#: (lnrepro.models.layers.SqueezeExcite; torchvision's SqueezeExcitation).
SE_MODULES = ("SqueezeExcite", "SqueezeExcitation")

#: Subdirectory of a run or profile directory that holds the tables.
LAYERS_DIR = "layers"


def layer_table_path(out_dir: str | Path, runtime: str) -> Path:
    """Where the table of `runtime` is written in a run or profile directory: layers/<runtime>.csv."""
    return Path(out_dir) / LAYERS_DIR / f"{runtime}.csv"


@dataclass(frozen=True)
class LayerTime:
    """One row of a per-layer table: what ran, its work, its median time per call."""

    name: str
    kind: str
    op: str
    macs: int | None
    bytes: int | None
    time_ms: float
    #: a compute kernel's shape where the runtime's event can be tied to one (what a latency predictor is fitted on,
    #: `lnrepro.profiling.predictor`); not a column of the CSV
    shape: KernelShape | None = None

    def row(self, peaks: Any | None) -> dict[str, Any]:
        """The row under `COLUMNS`, with the roofline's figures from `peaks` (None: left empty)."""
        from lnrepro.profiling.roofline import roofline_bound_ms

        seconds = self.time_ms / 1000
        known = self.macs is not None and self.bytes is not None
        bound = roofline_bound_ms(self.macs, self.bytes, peaks) if known and peaks is not None else None
        return {
            "name": self.name,
            "kind": self.kind,
            "op": self.op,
            "macs": self.macs,
            "bytes": self.bytes,
            "time_ms": self.time_ms,
            "intensity": 2 * self.macs / self.bytes if known and self.bytes else None,
            "gflops": 2 * self.macs / seconds / 1e9 if self.macs is not None and seconds > 0 else None,
            "gbps": self.bytes / seconds / 1e9 if self.bytes is not None and seconds > 0 else None,
            "bound_ms": bound,
            "roofline_share": bound / self.time_ms if bound is not None and self.time_ms > 0 else None,
        }


@dataclass(frozen=True)
class LayerTable:
    """The rows of one runtime, and the end-to-end median they are to add up to: unprofiled batch-1 calls of the
    same runtime timed with the profiled ones (`_reference_latency`)."""

    rows: list[LayerTime]
    latency_ms: float

    @property
    def sum_ms(self) -> float:
        return sum(row.time_ms for row in self.rows)


def _reference_latency(profiled: Callable[[], Any], plain: Callable[[], Any], runs: int, warmup: int) -> float:
    """Make `warmup` + `runs` `profiled` calls and time `runs` `plain` calls around them; the median milliseconds of
    the timed `plain` calls. On shared cores a measurement's speed drifts by more than the rows' error within
    seconds, so the reference is timed with the rows, not at another moment: call by call in turn at one thread;
    with more, just before and just after them, because two sessions' thread pools taking turns slow each other
    down (ONNX Runtime's workers spin between calls: 8.7 ms against 2.8 ms for GhostNet at 2 threads)."""
    seconds = []

    def timed_plain() -> None:
        start = time.perf_counter()
        plain()
        seconds.append(time.perf_counter() - start)

    if torch.get_num_threads() == 1:
        for index in range(warmup + runs):
            profiled()
            if index < warmup:
                plain()
            else:
                timed_plain()
        return 1000 * statistics.median(seconds)
    before = max(1, runs // 2)
    for count, then_profiled in ((before, True), (max(1, runs - before), False)):
        for _ in range(warmup):
            plain()
        for _ in range(count):
            timed_plain()
        if then_profiled:
            for _ in range(warmup + runs):
                profiled()
    return 1000 * statistics.median(seconds)


def conv_kind(groups: int, weight_shape: tuple[int, ...]) -> str:
    """The kind of a convolution from its group count and its weight's (out, in / groups, kH, kW) shape."""
    if groups > 1:
        return "depthwise" if weight_shape[1] == 1 else "grouped"
    return "conv1x1" if all(k == 1 for k in weight_shape[2:]) else "conv"


def _under(path: str, modules: Iterable[str]) -> bool:
    return any(path == module or path.startswith(module + ".") for module in modules)


def se_modules(model: nn.Module) -> list[str]:
    """Qualified names of the squeeze-and-excitation modules of `model`."""
    return [name for name, module in model.named_modules() if type(module).__name__ in SE_MODULES]


# --- eager ---------------------------------------------------------------------------------------------------------
_TORCH_KINDS = {
    "linear": ("linear", "matmul", "mm", "addmm", "bmm", "baddbmm", "einsum", "__matmul__"),
    "norm": ("batch_norm", "layer_norm", "group_norm", "instance_norm", "local_response_norm"),
    "pool": (
        "adaptive_avg_pool2d",
        "adaptive_max_pool2d",
        "avg_pool2d",
        "max_pool2d",
        "adaptive_avg_pool1d",
        "max_pool2d_with_indices",
        "mean",
    ),
    "concat_split_shuffle": (
        "cat",
        "concat",
        "concatenate",
        "stack",
        "split",
        "split_with_sizes",
        "chunk",
        "narrow",
        "slice",
        "select",
        "__getitem__",
        "view",
        "reshape",
        "flatten",
        "unflatten",
        "transpose",
        "permute",
        "contiguous",
        "clone",
        "pad",
        "squeeze",
        "unsqueeze",
        "expand",
        "channel_shuffle",
        "pixel_shuffle",
        "roll",
    ),
    "elementwise": (
        "add",
        "sub",
        "mul",
        "div",
        "relu",
        "relu6",
        "hardtanh",
        "hardswish",
        "hardsigmoid",
        "sigmoid",
        "silu",
        "gelu",
        "tanh",
        "clamp",
        "leaky_relu",
        "elu",
        "softmax",
        "neg",
        "exp",
    ),
    "quantize": ("quantize_per_tensor", "quantize_per_channel", "dequantize"),
}
_TORCH_OPS = {op: kind for kind, ops in _TORCH_KINDS.items() for op in ops}


def torch_op_kind(op: str, input_shapes: tuple[tuple[int, ...], ...]) -> str:
    """The kind of one torch call, from the function's name (dunder and in-place spellings folded: `__iadd__`,
    `add_` -> add) and, for a convolution, its input and weight shapes."""
    if op.startswith("conv") and len(input_shapes) >= 2:
        channels, weight = input_shapes[0][1], input_shapes[1]
        return conv_kind(max(1, channels // max(1, weight[1])), weight)
    base = op.strip("_")
    if op.startswith("__i") or op.startswith("__r"):
        base = op[3:].strip("_")
    return _TORCH_OPS.get(base, _TORCH_OPS.get(op, "other"))


def eager_layer_times(model: nn.Module, input_size: InputSize, runs: int = 20, warmup: int = 5) -> LayerTable:
    """Each torch call of one forward pass of one image, timed in `runs` passes after `warmup` untimed ones (eval
    mode under torch.inference_mode, as the `eager` runtime runs; the caller's mode is restored); plain passes
    timed with them give the latency."""
    if model_device(model).type != "cpu":
        raise UserInputError(
            "per-layer times in eager PyTorch are measured on the CPU (a GPU runs operators asynchronously, so a "
            "clock around each call would time its launch): move the network to the CPU"
        )
    operators = count_operators(model, input_size)
    se = se_modules(model)
    images = random_input(model, 1, input_size)
    timed: list[list[float]] = []
    expected = [(op.module, op.op) for op in operators]

    def traced() -> None:
        tracer = OperatorTracer(model, clock=True)
        with tracer:
            model(images)
        if [(call.module, call.op) for call in tracer.calls] != expected:
            raise UserInputError(
                f"{type(model).__name__} does not run the same operators on every pass (its forward depends "
                "on more than its input's shape): its per-layer times cannot be lined up"
            )
        timed.append([call.seconds for call in tracer.calls])

    with evaluation_mode(model), torch.inference_mode():
        latency_ms = _reference_latency(traced, lambda: model(images), runs, warmup)
    timed = timed[warmup:]
    rows, seen = [], {}
    for index, op in enumerate(operators):
        base = f"{op.module or type(model).__name__}/{op.op}"
        seen[base] = seen.get(base, 0) + 1
        kind = "se" if _under(op.module, se) else torch_op_kind(op.op, op.input_shapes)
        rows.append(
            LayerTime(
                name=base if seen[base] == 1 else f"{base}#{seen[base]}",
                kind=kind,
                op=op.op,
                macs=op.macs,
                bytes=op.bytes_moved,
                time_ms=1000 * statistics.median(run[index] for run in timed),
                shape=torch_kernel(op),
            )
        )
    return LayerTable(rows, latency_ms)


# --- ONNX Runtime ----------------------------------------------------------------------------------------------------
_ONNX_KINDS = {
    "linear": ("Gemm", "MatMul", "QGemm", "MatMulInteger", "QLinearMatMul", "FusedGemm", "FusedMatMul"),
    "norm": ("BatchNormalization", "LayerNormalization", "InstanceNormalization"),
    "pool": (
        "GlobalAveragePool",
        "AveragePool",
        "MaxPool",
        "GlobalMaxPool",
        "ReduceMean",
        "QLinearGlobalAveragePool",
        "QLinearAveragePool",
        "NhwcMaxPool",
    ),
    "concat_split_shuffle": (
        "Concat",
        "Split",
        "Slice",
        "Transpose",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Pad",
        "ReorderInput",
        "ReorderOutput",
        "Identity",
        "Gather",
        "Expand",
        "Tile",
        "DepthToSpace",
        "SpaceToDepth",
        "QLinearConcat",
        "Shape",  # the run-time shape a reshape (ShuffleNet's channel shuffle) is computed from
    ),
    "elementwise": (
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Relu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Clip",
        "LeakyRelu",
        "Tanh",
        "Max",
        "Min",
        "Sum",
        "Neg",
        "Erf",
        "Gelu",
        "Softmax",
        "QLinearAdd",
        "QLinearMul",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearSoftmax",
    ),
    "quantize": ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast"),
}
_ONNX_OPS = {op: kind for kind, ops in _ONNX_KINDS.items() for op in ops}
#: Convolutions, and the input that holds their weight.
_ONNX_CONVS = {"Conv": 1, "FusedConv": 1, "NhwcFusedConv": 1, "ConvInteger": 1, "QLinearConv": 3}
#: ONNX Runtime's kernels for these declare their output an alias of their input (no data is moved).
_ONNX_ALIASES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")
#: Bytes per element of ONNX Runtime's profiler type names.
_ONNX_SIZES = {
    "float": 4,
    "float16": 2,
    "bfloat16": 2,
    "double": 8,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "int64": 8,
    "uint64": 8,
    "bool": 1,
}


def onnx_scope(node_name: str) -> str:
    """The module path an ONNX node came from, from the TorchScript exporter's names, whose segments are each
    module's name in its parent, a container's child spelled after the container ('block', 'block.2'): '/features/
    features.4/block/block.2/fc1/Conv' -> 'features.4.block.2.fc1'. ONNX Runtime names a fused node after its output
    tensor ('/act1/Relu_output_0_nchwc': 'act1'); nodes it adds ('ReorderOutput_token_3') have no path: ''."""
    if not node_name.startswith("/"):
        return ""
    parts: list[str] = []
    for segment in node_name.strip("/").split("/")[:-1]:
        if parts and segment.startswith(parts[-1] + "."):
            parts[-1] = segment
        else:
            parts.append(segment)
    return ".".join(parts)


#: A tensor as the ONNX helpers below see it: (bytes per element, shape).
Tensor = tuple[int, tuple[int, ...]]


def _profiled(entries: list[dict[str, list[int]]]) -> list[Tensor]:
    """The tensors of ONNX Runtime's profiler `input_type_shape`/`output_type_shape` entries."""
    return [(_ONNX_SIZES.get(dtype, 4), tuple(shape)) for entry in entries for dtype, shape in entry.items()]


def _elements(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


@dataclass(frozen=True)
class OnnxNode:
    """A node of the graph ONNX Runtime ran (its dump of the optimised graph): attributes, and per input its
    constant tensor where the input is an initializer (None for an activation or an omitted optional input)."""

    attributes: dict[str, Any]
    constants: list[Tensor | None]


def _onnx_nodes(path: Path) -> dict[str, OnnxNode]:
    """Node name -> `OnnxNode`, from ONNX Runtime's dump of the graph it optimised."""
    import onnx

    graph = onnx.load(str(path)).graph
    initializers = {
        tensor.name: (onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize, tuple(tensor.dims))
        for tensor in graph.initializer
    }
    return {
        node.name: OnnxNode(
            {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute},
            [initializers.get(name) for name in node.input if name],
        )
        for node in graph.node
    }


def _node_inputs(profiled: list[Tensor], node: OnnxNode | None) -> list[Tensor]:
    """The node's inputs in order. The profiler lists the inputs it can see, which leaves out a weight the kernel has
    pre-packed (ONNX Runtime releases it: an int8 QLinearConv's weight); the graph's initializers fill the gap."""
    if node is None:
        return profiled
    inputs, position = [], 0
    for constant in node.constants:
        seen = profiled[position] if position < len(profiled) else None
        if constant is None:
            if seen is None:
                return profiled  # the two lists do not line up: the profiler's own list is what is known
            inputs.append(seen)
            position += 1
        else:
            if seen == constant:
                position += 1
            inputs.append(constant)
    return inputs


def onnx_node_cost(op: str, inputs: list[Tensor], outputs: list[Tensor], attributes: dict) -> tuple[str, int, int]:
    """(kind, multiply-adds, bytes moved) of one ONNX Runtime node from its input and output tensors ((bytes per
    element, shape), weights included) and its attributes (group, transA)."""
    read = [(_elements(shape), size) for size, shape in inputs]
    written = [] if op in _ONNX_ALIASES else [(_elements(shape), size) for size, shape in outputs]
    moved = moved_bytes(read, written)
    out = _elements(outputs[0][1]) if outputs else 0
    if op in _ONNX_CONVS and len(inputs) > _ONNX_CONVS[op]:
        weight = inputs[_ONNX_CONVS[op]][1]  # (out, in / groups, kH, kW) in every layout ONNX Runtime runs
        return conv_kind(int(attributes.get("group", 1)), weight), out * _elements(weight[1:]), moved
    kind = _ONNX_OPS.get(op, "other")
    if kind == "linear" and inputs:
        first = inputs[0][1]
        depth = first[0] if attributes.get("transA") else first[-1]
        return kind, out * depth, moved
    return kind, 0, moved


def onnx_kernel_shape(
    op: str, kind: str, macs: int, moved: int, inputs: list[Tensor], outputs: list[Tensor], attributes: dict
) -> KernelShape | None:
    """The `KernelShape` of a convolution or fully connected node (NCHW or NCHWc activations alike: (N, C, H, W) or
    (N, C / block, H, W, block), the spatial axes at 2 and 3 in both), None for any other node."""
    if not inputs or not outputs:
        return None
    image, out = inputs[0][1], outputs[0][1]
    if op in _ONNX_CONVS and len(inputs) > _ONNX_CONVS[op] and len(image) >= 4 and len(out) >= 4:
        weight = inputs[_ONNX_CONVS[op]][1]
        if len(weight) != 4:
            return None
        groups = int(attributes.get("group", 1))
        return conv_shape(
            kind, (image[2], image[3]), (weight[0], out[2], out[3]), weight, groups, macs, moved, image[0]
        )
    if kind == "linear" and len(image) == 2 and len(out) == 2:
        depth = image[0] if attributes.get("transA") else image[1]
        return linear_shape(depth, out[1], macs, moved, out[0])
    return None


def onnx_layer_times(
    model_bytes: bytes, input_size: InputSize, runs: int = 20, warmup: int = 5, se: Iterable[str] = ()
) -> LayerTable:
    """Each node of an ONNX model as ONNX Runtime runs it: `runs` profiled batch-1 runs after `warmup` ones
    (`profiled_session`); the unprofiled session the runtime times, timed with them, gives the latency.
    `se`: module paths of squeeze-and-excitation modules (their nodes are kind `se`)."""
    from lnrepro.profiling.runtimes import onnx_runner

    images = torch.randn(1, *input_shape(input_size), generator=torch.Generator().manual_seed(0))
    plain = onnx_runner(model_bytes, torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="lnrepro-layers-") as scratch:
        session, optimized = profiled_session(model_bytes, Path(scratch))
        feed = {session.get_inputs()[0].name: images.numpy()}
        latency_ms = _reference_latency(lambda: session.run(None, feed), lambda: plain(images), runs, warmup)
        return LayerTable(onnx_profile_rows(Path(session.end_profiling()), optimized, warmup, se), latency_ms)


def profiled_session(model_bytes: bytes, folder: Path) -> tuple[Any, Path]:
    """An ONNX Runtime session of `model_bytes` with the options the timed runtime uses (`runtimes._session`'s,
    read back from a session it made, so the graph optimisations and threads are the same) plus its profiler,
    writing its trace and its optimised graph (`optimized.onnx`, returned) into `folder`."""
    import onnxruntime

    from lnrepro.profiling.runtimes import _session

    base = _session(model_bytes, torch.device("cpu"), allow_gpu=False)
    options = base.get_session_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "profile")
    optimized = folder / "optimized.onnx"
    options.optimized_model_filepath = str(optimized)
    return onnxruntime.InferenceSession(model_bytes, options, providers=base.get_providers()), optimized


def onnx_profile_rows(trace: Path, optimized: Path, warmup: int, se: Iterable[str] = ()) -> list[LayerTime]:
    """The rows of a profiled session's trace (`session.end_profiling()`) and optimised graph, leaving out its
    first `warmup` runs."""
    return _onnx_rows(json.loads(trace.read_text()), _onnx_nodes(optimized), warmup, list(se))


def _onnx_rows(trace: list[dict], nodes: dict[str, OnnxNode], warmup: int, se: list[str]) -> list[LayerTime]:
    """The rows of an ONNX Runtime profile: each node's kernel time in the runs after the first `warmup`."""
    starts = sorted(event["ts"] for event in trace if event.get("cat") == "Session" and event["name"] == "model_run")
    if len(starts) <= warmup:
        raise RuntimeError("ONNX Runtime's profile holds no timed run")
    first = starts[warmup]
    durations: dict[str, list[float]] = {}
    described: dict[str, dict] = {}
    for event in trace:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        name = event["name"].removesuffix("_kernel_time")
        described.setdefault(name, event["args"])
        if event["ts"] >= first:
            durations.setdefault(name, []).append(event["dur"])
    rows = []
    for name, args in described.items():
        if name not in durations:
            continue
        op = args["op_name"]
        node = nodes.get(name)
        inputs = _node_inputs(_profiled(args["input_type_shape"]), node)
        outputs = _profiled(args["output_type_shape"])
        attributes = node.attributes if node else {}
        kind, macs, moved = onnx_node_cost(op, inputs, outputs, attributes)
        shape = onnx_kernel_shape(op, kind, macs, moved, inputs, outputs, attributes)
        if kind != "quantize" and _under(onnx_scope(name), se):
            kind = "se"
        rows.append(LayerTime(name, kind, op, macs, moved, statistics.median(durations[name]) / 1000, shape))
    return rows


# --- all runtimes --------------------------------------------------------------------------------------------------
def runtime_layer_times(
    runtime: str,
    model: nn.Module,
    input_size: InputSize,
    calibration: torch.Tensor | None = None,
    runs: int = 20,
    warmup: int = 5,
    exported: Mapping[str, str | Path] | None = None,
) -> LayerTable:
    """The per-layer rows of `model` in `runtime` (one of `LAYER_RUNTIMES`) with torch's current thread count.
    `calibration`: images for the int8 runtimes (None: random ones, for speed only). `exported`: runtime -> a file
    already made for it (the run's export/: model.onnx, model.int8.onnx, ...), used instead of exporting again."""
    from lnrepro.profiling.runtimes import INT8_RUNTIMES, check_runtime, prepare

    check_runtime(runtime)
    if runtime in NOT_REPORTED:
        raise UserInputError(f"runtime {runtime!r} cannot report per-layer times: {NOT_REPORTED[runtime]}")
    if runtime == "eager":
        return eager_layer_times(model, input_size, runs, warmup)
    if runtime in INT8_RUNTIMES and calibration is None:
        calibration = torch.randn(8, *input_shape(input_size), generator=torch.Generator().manual_seed(0))
    known = Path(exported[runtime]) if exported and runtime in exported else None
    if known is not None and not known.is_file():
        known = None
    se = se_modules(model)
    with tempfile.TemporaryDirectory(prefix="lnrepro-layers-") as scratch:
        if known is None:  # the runtime's own preparation makes the file, exactly as it is timed
            prepare(runtime, model, input_size, calibration=calibration, workdir=scratch)
            known = Path(scratch) / EXPORTED_FILES[runtime]
        program = known.read_bytes()
    if runtime.startswith("onnxruntime"):
        return onnx_layer_times(program, input_size, runs, warmup, se)
    return executorch_layer_times(program, input_size, runs, warmup)


# --- ExecuTorch ------------------------------------------------------------------------------------------------------
#: XNNPACK operator names (the part before " (") -> kind. Convolutions and fully connected operators are classed
#: from the lowered graph when their events line up with its nodes (`_xnnpack_nodes`), else by name here: XNNPACK
#: runs a stride-1 1x1 convolution as a "Fully Connected" operator, which by its name alone is `linear`.
_XNNPACK_KINDS = {
    "concat_split_shuffle": (
        "Copy",
        "Transpose",
        "Concatenate",
        "Slice",
        "Static Reshape",
        "Static Slice",
        "Static Transpose",
        "Constant Pad",
        "Reshape",
        "Even Split",
        "Depth To Space",
        "Space To Depth",
    ),
    "elementwise": (
        "Add",
        "Multiply",
        "Divide",
        "Subtract",
        "Clamp",
        "HardSwish",
        "Sigmoid",
        "Minimum",
        "Maximum",
        "Negate",
        "ELU",
        "Leaky ReLU",
        "Square",
        "Tanh",
        "Softmax",
        "Exp",
        "GELU",
        "Abs",
        "Invalid Unary Op",  # XNNPACK 1.5.1's name for some int8 unary operators (MobileNet V3's, by lookup table)
    ),
    "pool": ("Mean", "Global Average Pooling", "Average Pooling", "Max Pooling", "ArgMax Pooling", "Sum"),
    "quantize": ("Convert",),
    "linear": ("Fully Connected", "Batch Matrix Multiply"),
}
_XNNPACK_OPS = {op: kind for kind, ops in _XNNPACK_KINDS.items() for op in ops}
#: Lowered-graph node types -> the XNNPACK operator (name before " (") that runs each. Convolutions form one family:
#: XNNPACK picks the operator (convolution or fully connected) for a convolution node itself.
_XNNPACK_FAMILIES = {
    "XNNConv2d": "conv",
    "XNNDepthwiseConv2d": "conv",
    "XNNFullyConnected": "conv",
    "XNNAdd": "Add",
    "XNNMultiply": "Multiply",
    "XNNDiv": "Divide",
    "XNNSubtract": "Subtract",
    "XNNClamp": "Clamp",
    "XNNHardswish": "HardSwish",
    "XNNSigmoid": "Sigmoid",
    "XNNStaticTranspose": "Transpose",
    "XNNGlobalAvgPooling2d": "Mean",
    "XNNAvgPooling2d": "Average Pooling",
    "XNNMaxPooling2d": "Max Pooling",
    "XNNConvert": "Convert",
    "XNNStaticSlice": "Slice",
    "XNNStaticConstantPad": "Constant Pad",
}
#: Bytes per element of the lowered graph's data types.
_XNNPACK_SIZES = {"fp32": 4, "fp16": 2, "qint8": 1, "quint8": 1, "qcint8": 1, "qdint8": 1, "qint32": 4, "qcint32": 4}


def _xnnpack_family(event: str) -> str:
    family = event.split(" (")[0]
    return "conv" if family in ("Convolution", "Fully Connected") else family


def _xnnpack_name_kind(event: str) -> str:
    family = event.split(" (")[0]
    if family == "Convolution":
        return "depthwise" if "DWConv" in event else "conv" if "IGEMM" in event else "conv1x1"
    return _XNNPACK_OPS.get(family, "other")


def _decode_xnnpack(payload: bytes) -> dict[str, Any]:
    """The XNNPACK delegate's lowered graph (nodes with their attributes, values with their dims) as a dict, decoded
    with the flatc that ExecuTorch ships and XNNPACK's schema."""
    import importlib.resources

    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
    from executorch.exir._serialize._flatbuffer import _flatc_decompile

    header = XNNHeader.from_bytes(payload[: XNNHeader.EXPECTED_LENGTH])
    graph = payload[header.flatbuffer_offset : header.flatbuffer_offset + header.flatbuffer_size]
    schema = importlib.resources.files("executorch.backends.xnnpack.serialization") / "schema.fbs"
    with tempfile.TemporaryDirectory(prefix="lnrepro-xnnpack-") as scratch:
        (Path(scratch) / "schema.fbs").write_bytes(schema.read_bytes())
        (Path(scratch) / "graph.bin").write_bytes(graph)
        _flatc_decompile(scratch, str(Path(scratch) / "schema.fbs"), str(Path(scratch) / "graph.bin"), ["--raw-binary"])
        text = (Path(scratch) / "graph.json").read_text()
    # flatc writes infinite clamp bounds as inf, which JSON spells Infinity
    text = re.sub(r":\s*(-?)inf\b", r": \1Infinity", text)
    return json.loads(re.sub(r":\s*-?nan\b", ": NaN", text))


def _program_layout(program: bytes) -> tuple[list[dict[str, Any] | None], list[str]]:
    """The lowered graph of each delegate call in execution order (None where it cannot be read) and the operator
    of each portable kernel call in execution order, from the program's (single-chain) execution plan."""
    from executorch.exir._serialize import _deserialize_pte_binary

    serialized = _deserialize_pte_binary(program).program
    plan = serialized.execution_plan[0]
    delegates, kernels = [], []
    for chain in plan.chains:
        for instruction in chain.instructions:
            arguments = instruction.instr_args
            kind = type(arguments).__name__
            if kind == "KernelCall":
                operator = plan.operators[arguments.op_index]
                kernels.append(operator.name + (f".{operator.overload}" if operator.overload else ""))
            elif kind == "DelegateCall":
                processed = plan.delegates[arguments.delegate_index].processed
                try:
                    payload = serialized.backend_delegate_data[processed.index].data
                    delegates.append(_decode_xnnpack(bytes(payload)))
                except Exception as error:  # the graph is a courtesy for kinds and shapes; times do not need it
                    log.info(
                        "ExecuTorch delegate %d's graph not read (%s): no shapes for its rows", len(delegates), error
                    )
                    delegates.append(None)
    return delegates, kernels


#: What `_xnnpack_nodes` ties to an XNNPACK event: (kind, multiply-adds, bytes, a compute kernel's shape).
XnnpackCost = tuple[str, int, int | None, KernelShape | None]


def _xnnpack_nodes(graph: dict[str, Any] | None, events: list[str]) -> list[XnnpackCost | None]:
    """(kind, multiply-adds, bytes, shape) of the graph node behind each XNNPACK operator event of one delegate call, or
    None where the event cannot be tied to a node. XNNPACK creates one operator per node in the graph's order, but
    fuses some nodes away (a clamp into the operator before it) and runs a concatenation as copies: events are tied
    to nodes by their order within one family of operators only where that family's event and node counts are
    equal, and a convolution family additionally only where every event's operator fits its node's type."""
    tied: list[XnnpackCost | None] = [None] * len(events)
    if graph is None:
        return tied
    values = {}
    for value in graph["xvalues"]:
        tensor = value["xvalue_union"].get("tensor_value", value["xvalue_union"])
        values[tensor["id_out"]] = tensor
    inputs = [values[i] for i in graph["input_ids"] if i in values]
    batch = inputs[0]["dims"][0] if inputs and inputs[0]["dims"] else None

    def elements(value_id: int) -> int | None:
        value = values.get(value_id)
        if value is None:
            return None
        count = _elements(tuple(value["dims"]))
        if value["dims"] and value.get("constant_buffer_idx", 0) == 0 and value.get("named_key") in (None, ""):
            if batch is None or value["dims"][0] != batch:
                return None  # an activation without the batch axis first: its batch-1 size is not known
            count //= batch  # dims hold the program's batch bound; one image is timed
        return count

    def dims(value_id: int) -> tuple[int, ...]:
        return tuple(values[value_id]["dims"]) if value_id in values else ()

    def cost(node: dict[str, Any]) -> XnnpackCost:
        kind_name, fields = node["xnode_union_type"], node["xnode_union"]
        reads = [fields[key] for key in ("input1_id", "input2_id", "input_id", "filter_id", "bias_id") if key in fields]
        reads = [value_id for value_id in reads if value_id != -1 and value_id in values]
        out = elements(fields.get("output_id", -1)) if "output_id" in fields else None
        sizes = [
            (elements(i), _XNNPACK_SIZES.get(values[i]["datatype"].removeprefix("xnn_datatype_"), 4)) for i in reads
        ]
        moved = None
        if out is not None and all(count is not None for count, _ in sizes):
            size = _XNNPACK_SIZES.get(values[fields["output_id"]]["datatype"].removeprefix("xnn_datatype_"), 4)
            moved = moved_bytes(sizes, [(out, size)])
        if kind_name in ("XNNConv2d", "XNNDepthwiseConv2d"):
            per_output = fields["group_input_channels"] * fields["kernel_height"] * fields["kernel_width"]
            weight = (
                fields["groups"] * fields["group_output_channels"],
                fields["group_input_channels"],
                fields["kernel_height"],
                fields["kernel_width"],
            )
            kind = "depthwise" if kind_name == "XNNDepthwiseConv2d" else conv_kind(fields["groups"], weight)
            macs = (out or 0) * per_output
            image, result = dims(fields.get("input1_id", -1)), dims(fields["output_id"])  # NHWC
            shape = None
            if len(image) == 4 and len(result) == 4 and moved is not None:
                shape = conv_shape(
                    kind, (image[1], image[2]), (weight[0], result[1], result[2]), weight, fields["groups"], macs, moved
                )
            return kind, macs, moved, shape
        if kind_name == "XNNFullyConnected":
            filter_dims = values[fields["filter_id"]]["dims"]
            macs = (out or 0) * filter_dims[-1]
            shape = linear_shape(filter_dims[-1], filter_dims[0], macs, moved) if moved is not None else None
            return "linear", macs, moved, shape
        return _XNNPACK_OPS.get(_XNNPACK_FAMILIES[kind_name], "other"), 0, moved, None

    families: dict[str, list[dict[str, Any]]] = {}
    for node in graph["xnodes"]:
        family = _XNNPACK_FAMILIES.get(node["xnode_union_type"])
        families.setdefault(family or node["xnode_union_type"], []).append(node)
    by_family: dict[str, list[int]] = {}
    for index, event in enumerate(events):
        by_family.setdefault(_xnnpack_family(event), []).append(index)
    for family, indices in by_family.items():
        nodes = families.get(family, [])
        if len(nodes) != len(indices):
            continue
        if family == "conv" and not all(_fits(events[i], node["xnode_union_type"]) for i, node in zip(indices, nodes)):
            continue
        for index, node in zip(indices, nodes):
            tied[index] = cost(node)
    return tied


def _fits(event: str, node_type: str) -> bool:
    """Whether an XNNPACK convolution-family operator can run a node of this type."""
    if "DWConv" in event:
        return node_type == "XNNDepthwiseConv2d"
    if event.startswith("Fully Connected"):
        return node_type in ("XNNFullyConnected", "XNNConv2d")
    return node_type == "XNNConv2d"


def executorch_layer_times(program: bytes, input_size: InputSize, runs: int = 20, warmup: int = 5) -> LayerTable:
    """Each operator of an ExecuTorch program as it runs: `runs` batch-1 calls after `warmup` ones with the event
    tracer on (ETDump, read with ExecuTorch's Inspector), at torch's thread count; the program loaded without the
    tracer, timed with them, gives the latency.

    Rows: every operator inside an XNNPACK delegate (this build times each one, in whole microseconds), every kernel
    call outside the delegates (portable kernels: the instruction's time), and per delegate call the time it took
    beyond its operators (reshaping and setting up XNNPACK's runtime for the input, and what the operators' whole-
    microsecond times leave out), so that the rows account for the program's instructions. XNNPACK's events carry
    no shapes: multiply-adds and bytes come from the lowered graph where the events line up with its nodes
    (`_xnnpack_nodes`), else stay empty, as they do for portable kernels. Squeeze-and-excitation operators are
    classed by what they are (pool, conv1x1, elementwise): the program keeps no module paths."""
    from executorch.devtools import Inspector

    from lnrepro.profiling.runtimes import executorch_runner

    runner, plain = executorch_runner(program, enable_etdump=True), executorch_runner(program)
    images = torch.randn(1, *input_shape(input_size), generator=torch.Generator().manual_seed(0))
    latency_ms = _reference_latency(lambda: runner(images), lambda: plain(images), runs, warmup)
    with tempfile.TemporaryDirectory(prefix="lnrepro-etdump-") as scratch:
        trace, debug = Path(scratch) / "trace.etdp", Path(scratch) / "debug.bin"
        runner.program.write_etdump_result_to_file(str(trace), str(debug))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # that no tensor data was kept for debugging: times need none
            inspector = Inspector(etdump_path=str(trace))
    blocks = [block for block in inspector.event_blocks if any(e.name == "Method::execute" for e in block.events)]
    if not blocks:
        raise RuntimeError("ExecuTorch's event trace holds no run of the program")
    events = blocks[0].events
    delegates, kernels = _program_layout(program)

    def times(event) -> list[float]:
        raw = list(event.perf_data.raw)
        return raw[warmup:] if len(raw) > warmup else raw

    rows: list[LayerTime] = []
    pending: list[Any] = []  # operator events of the delegate call in progress
    delegate_index = kernel_index = 0
    for event in events:
        if event.is_delegated_op:
            pending.append(event)
        elif event.name == "OPERATOR_CALL":
            op = kernels[kernel_index] if kernel_index < len(kernels) else "kernel"
            base = op.split("::")[-1].split(".")[0]
            rows.append(
                LayerTime(
                    f"kernel {kernel_index}: {op}",
                    _portable_kind(base),
                    op,
                    None,
                    None,
                    statistics.median(times(event)),
                )
            )
            kernel_index += 1
        elif event.name == "DELEGATE_CALL":
            graph = delegates[delegate_index] if delegate_index < len(delegates) else None
            names = [e.name for e in pending]
            tied = _xnnpack_nodes(graph, names)
            for inner, node in zip(pending, tied):
                kind, macs, moved, shape = node or (_xnnpack_name_kind(inner.name), None, None, None)
                op, median = inner.name.split(" #")[0], statistics.median(times(inner))
                rows.append(LayerTime(f"delegate {delegate_index}: {inner.name}", kind, op, macs, moved, median, shape))
            whole = times(event)
            inner_runs = [times(inner) for inner in pending]
            outside = [whole[k] - sum(run[k] for run in inner_runs if k < len(run)) for k in range(len(whole))]
            label = "beyond its operators" if pending else "whole call (this build reports no operator inside it)"
            rows.append(
                LayerTime(
                    f"delegate {delegate_index}: XNNPACK call {label}",
                    "other",
                    "DELEGATE_CALL",
                    None,
                    None,
                    max(0.0, statistics.median(outside)),
                )
            )
            pending, delegate_index = [], delegate_index + 1
    return LayerTable(rows, latency_ms)


def _portable_kind(op: str) -> str:
    """The kind of a portable kernel from its operator's base name (`_to_dim_order_copy`, `et_view`,
    `split_with_sizes_copy`, ...): ExecuTorch's out-variant copies of view operators are data movement."""
    if op in ("_to_dim_order_copy", "et_view", "_clone_dim_order"):
        return "concat_split_shuffle"
    return torch_op_kind(op.removesuffix("_copy"), ())


def write_layer_table(path: str | Path, rows: list[LayerTime], peaks: Any | None) -> Path:
    """`rows` as a CSV under `COLUMNS` (empty cells for unknown values), written atomically."""
    from io import StringIO

    from lnrepro.utils.files import atomic_write_text

    text = StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for layer in rows:
        writer.writerow({key: _cell(value) for key, value in layer.row(peaks).items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text.getvalue())
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_layer_table(path: str | Path) -> list[dict[str, Any]]:
    """A layers/<runtime>.csv back as dicts: numbers as int or float, empty cells as None."""
    rows = []
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            parsed: dict[str, Any] = {}
            for key, value in row.items():
                if key in ("name", "kind", "op"):
                    parsed[key] = value
                elif value == "":
                    parsed[key] = None
                else:
                    parsed[key] = int(value) if key in ("macs", "bytes") else float(value)
            rows.append(parsed)
    return rows


def time_by_kind(rows: Iterable[Mapping[str, Any]]) -> list[tuple[str, float, float]]:
    """(kind, milliseconds, share of the rows' total) for each kind that has time, in `KINDS` order."""
    totals = {kind: 0.0 for kind in KINDS}
    for row in rows:  # a table edited by hand may hold an empty time or a kind of its own
        if row.get("time_ms") is not None:
            totals[row["kind"] if row["kind"] in totals else "other"] += row["time_ms"]
    whole = sum(totals.values())
    return [(kind, ms, ms / whole if whole else 0.0) for kind, ms in totals.items() if ms > 0]


def layer_times(
    model: nn.Module,
    input_size: InputSize,
    runtimes: Iterable[str],
    out_dir: str | Path,
    calibration: torch.Tensor | None = None,
    runs: int = 20,
    warmup: int = 5,
    exported: Mapping[str, str | Path] | None = None,
    keep_going: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Time each layer of `model` in each of `runtimes` that can report it (`LAYER_RUNTIMES`; `compiled` is
    skipped with one line) at torch's current thread count, write `<out_dir>/layers/<runtime>.csv` for each, and
    return metrics: `layers/<runtime>_sum_ms` (the rows' total, to set beside `latency/<runtime>_ms`) and the
    roofline's peaks (`roofline/gflops`, `roofline/gbps`), measured once per machine and thread count and cached.
    `keep_going`: a runtime that fails leaves `layers/<runtime>_error` and the others are measured."""
    from lnrepro.profiling.roofline import machine_peaks

    check_integer("runs", runs, 1)
    check_integer("warmup", warmup, 0)
    runtimes = list(runtimes)
    peaks = machine_peaks(torch.get_num_threads())
    metrics: dict[str, Any] = dict(peaks.metrics())
    reportable = [runtime for runtime in runtimes if runtime in LAYER_RUNTIMES]
    for runtime in runtimes:
        if runtime in NOT_REPORTED:
            log.info("per-layer times: %s not reported (%s)", runtime, NOT_REPORTED[runtime])
    for done, runtime in enumerate(reportable):
        if progress is not None:
            progress(runtime, done, len(reportable))
        start = time.perf_counter()
        try:
            table = runtime_layer_times(runtime, model, input_size, calibration, runs, warmup, exported)
        except Exception as error:
            if not keep_going:
                raise
            reason = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
            metrics[schema.runtime_key(schema.LAYERS_ERROR, runtime)] = reason
            log.warning("per-layer times in %s failed: %s", runtime, reason)
            continue
        write_layer_table(layer_table_path(out_dir, runtime), table.rows, peaks)
        metrics[schema.runtime_key(schema.LAYERS_SUM, runtime)] = table.sum_ms
        metrics[schema.runtime_key(schema.LAYERS_LATENCY, runtime)] = table.latency_ms
        log.info("per-layer times in %s: %d rows in %.1f s", runtime, len(table.rows), time.perf_counter() - start)
    if progress is not None:
        progress("done", len(reportable), len(reportable))
    return metrics
