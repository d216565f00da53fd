"""One network in each deployment runtime: eager PyTorch, `torch.compile`, ONNX Runtime fp32 and ONNX Runtime int8.

A lightweight CNN's speed depends on what runs it as much as on its FLOPs: at batch 1 on a CPU, eager PyTorch time
is mostly framework overhead, which compilation and ONNX Runtime remove (docs/RESULTS.md). This module
measures any `nn.Module`, trained or not, in each of `RUNTIMES` the same way:

- `prepare(runtime, model, input_size)` builds a `Runner`: a callable from a float NCHW batch (normalised exactly
  as eager sees it) to logits as a torch tensor, with `facts` (preparation seconds, the largest logit difference
  from eager, compile-cache state, quantisation settings) under their metrics.json names.
- `measure_runtime(...)` times one runner at batch 1 (median and p90 latency) and at the throughput batch with
  `lnrepro.profiling.timing`'s `latency` and `inference_throughput`, the same functions that time eager PyTorch, and
  records the CPU and whether the figures look contended (`lnrepro.profiling.cpu`).
- `runtime_accuracy(runner, batches)` is top-1 accuracy of a runner, for `test/acc_<runtime>`.

Every runtime except `eager` runs a frozen copy of the network as it was when prepared (an export, or a compiled
deep copy), so the caller's network is never compiled, exported in place or switched to another mode for good.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lnrepro.errors import UserInputError, check_integer
from lnrepro.profiling.context import InputSize, input_shape, model_device, model_dtype, random_input, synchronize
from lnrepro.profiling.counts import evaluation_mode
from lnrepro.profiling.cpu import contended, cpu_features, cpu_pressure
from lnrepro.profiling.timing import inference_throughput, latency
from lnrepro.schema import RUNTIMES

#: The packages each runtime imports (module name = the pip distribution name for all). The TorchScript ONNX
#: exporter is part of torch; ONNX Runtime's quantisation tools import `onnx`; ExecuTorch's int8 path imports the
#: PT2E quantisation flow from torchao (torch 2.14 no longer has torch.ao.quantization.quantize_pt2e).
_PACKAGES = {
    "onnxruntime": ("onnxruntime",),
    "onnxruntime_int8": ("onnxruntime", "onnx"),
    "executorch": ("executorch",),
    "executorch_int8": ("executorch", "torchao"),
}
#: Runtimes whose packages come with an optional extra of lnrepro rather than with lnrepro itself: ExecuTorch
#: brings coremltools, pandas, scikit-learn and torchao (hundreds of MB) that training does not need.
_EXTRAS = {"executorch": "mobile", "executorch_int8": "mobile"}

#: The batch an ExecuTorch program is exported for: 1, what a phone app runs, and the only batch at which every
#: family lowers whole. Checked 2026-12-03 (executorch 1.5.1): with a dynamic batch axis, ShuffleNet V2's channel
#: shuffle (a view on the symbolic batch) stays outside XNNPACK and the delegates after it keep the example's
#: static batch, so the program fails at any other batch; and a batch bound above 15 is not honoured at all.
#: Larger batches (throughput, accuracy) run image by image: the speed of the file a phone ships.
EXECUTORCH_MAX_BATCH = 1

#: ONNX opset of the exports (17: every operator the zoo uses, supported by ONNX Runtime 1.18 and later).
OPSET = 17

#: Images per calibration batch fed to ONNX Runtime (MinMax calibration takes the min/max over all batches, so the
#: split changes memory only, not the result).
_CALIBRATION_BATCH = 32


# --- checks before any work ----------------------------------------------------------------------------------------
def _cxx_compilers(device: torch.device) -> list[str]:
    """The compilers torch.compile's backend would call. Inductor's CPU code is C++ built by `$CXX`, else `g++`
    (torch._inductor.config.cpp.cxx; a plain `cc`/`gcc` is not searched for); its GPU code is Triton, whose launcher
    is built by `$CC`, else clang, gcc or cc."""
    if device.type == "cuda":
        return [c for c in (os.environ.get("CC"), "clang", "gcc", "cc") if c]
    names = [os.environ.get("CXX") or "g++"]
    config = sys.modules.get("torch._inductor.config")  # not imported for this (seconds): only when already loaded
    if config is not None:  # it may have been set in code (torch._inductor.config.cpp.cxx = ...)
        names += [c for c in getattr(config.cpp, "cxx", ()) if c]
    return list(dict.fromkeys(names))


def check_runtime(runtime: str, device: torch.device | str = "cpu") -> None:
    """Refuse, in one line each, an unknown runtime name, a runtime whose package is not installed, and `compiled`
    without the C/C++ compiler torch.compile needs. Cheap: call it before a fit to fail early."""
    if runtime not in RUNTIMES:
        raise UserInputError(f"unknown runtime {runtime!r}; choose from: {', '.join(RUNTIMES)}")
    for package in _PACKAGES.get(runtime, ()):
        if importlib.util.find_spec(package) is None:
            install = f"pip install 'lnrepro[{_EXTRAS[runtime]}]'" if runtime in _EXTRAS else f"pip install {package}"
            raise UserInputError(f"runtime {runtime!r} needs the package {package}, which is not installed ({install})")
    if runtime == "compiled":
        candidates = _cxx_compilers(torch.device(device))
        if not any(shutil.which(c) for c in candidates):
            raise UserInputError(
                f"runtime 'compiled' needs a C/C++ compiler, which is not installed: torch.compile "
                f"builds its kernels with one of {', '.join(candidates)} and none is on PATH "
                f"(install g++, e.g. apt-get install g++, or set CXX)"
            )


#: The runtimes that quantise to int8 with activation ranges calibrated on training images.
INT8_RUNTIMES = ("onnxruntime_int8", "executorch_int8")


def _calibration_images(
    calibration: torch.Tensor | None, input_size: InputSize, runtime: str = "onnxruntime_int8"
) -> torch.Tensor:
    if calibration is None:
        raise UserInputError(
            f"runtime {runtime!r} needs calibration images (a float tensor of N >= 1 "
            "normalised images) to choose its activation ranges"
        )
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 4:
        raise UserInputError("calibration must be a float tensor of N images (N x C x H x W)")
    if calibration.shape[0] < 1:
        raise UserInputError(f"calibration has {calibration.shape[0]} images; int8 calibration needs at least 1")
    if tuple(calibration.shape[1:]) != input_shape(input_size):
        raise UserInputError(
            f"calibration images are {tuple(calibration.shape[1:])}, the network's input is {input_shape(input_size)}"
        )
    return calibration.detach().to("cpu", torch.float32)


# --- runners -------------------------------------------------------------------------------------------------------
@dataclass
class Runner:
    """A prepared runtime: `runner(images)` -> logits (a torch tensor on the images' device); `facts` holds what
    preparing it measured, under metrics.json names (a compiled runner adds `compile/<batch>_s` on the first call
    of each new shape)."""

    runtime: str
    run: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    facts: dict[str, Any] = field(default_factory=dict)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images)


def _eager(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(images)

    return run


def _compile_counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    inductor, aot = counters["inductor"], counters["aot_autograd"]
    return {
        "graphs": counters["frames"]["ok"],
        "hits": inductor["fxgraph_cache_hit"] + aot["autograd_cache_hit"],
        # a bypass (a graph the cache cannot key) is built from scratch like a miss
        "misses": inductor["fxgraph_cache_miss"] + inductor["fxgraph_cache_bypass"] + aot["autograd_cache_miss"],
    }


class _Compiled:
    """torch.compile (inductor) on a deep copy of the uncompiled network, timing the first call of each new input
    shape, which is when compilation happens: `compile/<batch>_s`.

    Default (automatic dynamic) shapes: the first shape (batch 1) compiles a graph specialised to it; the second
    compiles one graph with a symbolic batch that every later batch size reuses, so a profile or an accuracy pass
    with a ragged last batch costs at most two compilations. `compile/graphs` counts the graphs dynamo compiled for
    this runner: 0 when this process already compiled an identical network (dynamo guards on the modules'
    structure, not on their identity or weights, and reuses that graph), and then `compile/<batch>_s` is only the
    first call's time.

    Whether inductor's on-disk cache was warm is read from torch._dynamo's counters around each first call:
    `inductor.fxgraph_cache_hit/miss/bypass` (the FX graph cache: generated and built C++ kernels) and
    `aot_autograd.autograd_cache_hit/miss` (the AOT graph cache in front of it). The counters record what happened
    in this process; a time threshold would mistake a warm cache for a fast machine, and the files in the cache
    directory do not say whether this graph's key is among them. `compile/cache_warm` is True while no lookup has
    missed (nothing was built from scratch), False once one has. The cache lives in /tmp/torchinductor_<user> (or
    $TORCHINDUCTOR_CACHE_DIR) and survives between processes, so a second run of the same network compiles in a
    fraction of the first run's time."""

    def __init__(self, model: nn.Module, facts: dict[str, Any]) -> None:
        self.compiled = torch.compile(model)
        self.facts = facts
        self.shapes: set[tuple[int, ...]] = set()
        self.facts["compile/graphs"], self.misses = 0, 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        shape = tuple(images.shape)
        if shape in self.shapes:
            with torch.inference_mode():
                return self.compiled(images)
        before, start = _compile_counters(), time.perf_counter()
        with torch.inference_mode():
            logits = self.compiled(images)
        synchronize(images.device)
        seconds, after = time.perf_counter() - start, _compile_counters()
        self.shapes.add(shape)
        self.facts[f"compile/{shape[0]}_s"] = seconds
        self.facts["compile/graphs"] += after["graphs"] - before["graphs"]
        self.misses += after["misses"] - before["misses"]
        self.facts["compile/cache_warm"] = self.misses == 0
        return logits


def _unsupported_layer(model: nn.Module, images: torch.Tensor, operator: str) -> str | None:
    """Which module (qualified name and type) is innermost when `operator` (e.g. "aten::i0") runs, found by one
    forward pass under a dispatch spy, so that an export failure can name the layer and not only the operator."""
    from torch.utils._python_dispatch import TorchDispatchMode

    stack, found, hooks = [""], [], []
    kinds = {name: type(module).__name__ for name, module in model.named_modules()}

    def leave(_module, _inputs, _output) -> None:  # returns None: a forward hook's result would replace the output
        stack.pop()

    for name, module in model.named_modules():  # list.append returns None, so the inputs stay as they are
        hooks.append(module.register_forward_pre_hook(lambda _m, _a, name=name: stack.append(name)))
        hooks.append(module.register_forward_hook(leave))

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not found and func._schema.name == operator:
                found.append(stack[-1])
            return func(*args, **(kwargs or {}))

    try:
        with torch.no_grad(), Spy():
            model(images)
    except Exception:  # the spy is a courtesy to the error message; the export error is the news
        pass
    finally:
        for hook in hooks:
            hook.remove()
    if not found:
        return None
    return f"layer {found[0]}, type {kinds[found[0]]}" if found[0] else f"{type(model).__name__}.forward itself"


def _export_onnx(model: nn.Module, input_size: InputSize, path: Path) -> float:
    """Export a float32 CPU copy of `model` in eval mode to `path` with a dynamic batch axis; the seconds taken.

    The TorchScript-based exporter (dynamo=False). torch 2.14's default, the torch.export-based exporter, needs
    the onnxscript package, which is not a dependency here; the TorchScript one exports every family of the zoo,
    channel shuffle (view/transpose on traced sizes) and Ghost modules (concatenate, then slice) included, with the
    batch axis dynamic (checked 2026-11-30 for all nine families at width 0.25, stem cifar: batch 1 and 5 run,
    |ONNX Runtime - eager| <= 5e-6). It warns that it is the legacy path. Eval-mode export folds BatchNorm into the
    convolutions. The trace uses batch 2, so that no size-1 batch is baked into a reshape."""
    exported = copy.deepcopy(model).float().cpu().eval()
    images = torch.randn(2, *input_shape(input_size), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy-exporter deprecation and tracer warnings
            torch.onnx.export(
                exported,
                (images,),
                str(path),
                dynamo=False,
                input_names=["images"],
                output_names=["logits"],
                opset_version=OPSET,
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
    except Exception as error:  # any export failure is the network's, told in one line
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        match = re.search(r"operator '([\w:.]+)'", message)
        layer = _unsupported_layer(exported, images, match.group(1)) if match else None
        raise UserInputError(
            f"{type(model).__name__} cannot be exported to ONNX: {message}"
            + (f" (in {layer})" if layer else "")
            + "; replace that operation, or leave the ONNX runtimes out"
        ) from error
    return time.perf_counter() - start


def _session(model_bytes: bytes, device: torch.device, allow_gpu: bool = True):
    """An ONNX Runtime session with torch's current CPU thread count (so the profile's `threads` holds for every
    runtime), on the CUDA provider when the network is on a CUDA device and this onnxruntime has that provider,
    else on the CPU provider. The CUDA provider comes only with the onnxruntime-gpu distribution, which installs
    the same `onnxruntime` module as onnxruntime: the two cannot share an environment (installing one over the
    other breaks both), so a GPU environment has onnxruntime-gpu instead."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no per-node placement warnings
    providers = ["CPUExecutionProvider"]
    if (
        allow_gpu
        and device.type == "cuda"
        and torch.cuda.is_available()
        and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    ):
        providers.insert(0, "CUDAExecutionProvider")
    return onnxruntime.InferenceSession(model_bytes, options, providers=providers)


def _onnx_runner(session) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits of `session` as a float32 torch tensor on the images' device (ONNX Runtime takes and returns host
    numpy arrays here; the copies are part of what deploying through it costs)."""

    def run(images: torch.Tensor) -> torch.Tensor:
        feed = {"images": images.detach().to("cpu", torch.float32).contiguous().numpy()}
        logits = torch.from_numpy(session.run(None, feed)[0])
        return logits if images.device.type == "cpu" else logits.to(images.device)

    return run


def onnx_runner(model_bytes: bytes, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """A runner of the ONNX model `model_bytes` (an exported file's bytes: `lnrepro-eval exported=`) in an ONNX
    Runtime session made as the profile makes its own (`_session`, `_onnx_runner`)."""
    return _onnx_runner(_session(model_bytes, torch.device(device)))


def _quantize(source: Path, target: Path, calibration: torch.Tensor, reduce_range: bool) -> None:
    """Static int8 quantisation by ONNX Runtime's recipe: `quant_pre_process` (symbolic shape inference and graph
    optimisation, so that quantisation sees fused nodes), then `quantize_static` in the QDQ format with per-channel
    weight scales and MinMax activation ranges from `calibration`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quant_pre_process, quantize_static

    class Reader(CalibrationDataReader):  # defined here: its base class is onnxruntime's, imported on demand
        def __init__(self, images: torch.Tensor) -> None:
            self.batches = iter(images.split(_CALIBRATION_BATCH))

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch.contiguous().numpy()}

    processed = target.with_name(target.stem + ".pre.onnx")
    # its INFO line ("Performing symbolic shape inference...") is progress chatter in every run's log, not a result
    logging.getLogger("onnxruntime.quantization.shape_inference").setLevel(logging.WARNING)
    quant_pre_process(str(source), str(processed))
    quantize_static(
        str(processed),
        str(target),
        Reader(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
    )


def prepare(
    runtime: str,
    model: nn.Module,
    input_size: InputSize,
    calibration: torch.Tensor | None = None,
    workdir: str | Path | None = None,
) -> Runner:
    """`model` ready to run in `runtime` (see `RUNTIMES`), as a `Runner`.

    - eager: the model itself, switched to eval mode (for good: `measure_runtime` restores the caller's mode), each
      call under torch.inference_mode.
    - compiled: torch.compile (inductor) of a deep copy of the uncompiled network (an already compiled module is
      unwrapped first), so the caller's module stays uncompiled; compiles for batch 1 here.
    - onnxruntime: exported to ONNX with a dynamic batch axis, run by an ONNX Runtime session.
    - onnxruntime_int8: the same export, statically quantised to int8 (QDQ, per-channel weights) with activation
      ranges from `calibration` (a float tensor of N >= 1 images, normalised as eager sees them).
      `reduce_range` (7-bit weights) is used on x86 CPUs without VNNI, whose U8S8 int8 kernels (VPMADDUBSW) can
      saturate 16-bit intermediate sums (ONNX Runtime's quantisation guide); with VNNI, or off x86, full range.
      It runs on the CPU provider always: int8 QDQ on the CUDA provider runs dequantised float kernels.

    Facts (in `runner.facts`): `<runtime>/max_abs_diff` (largest |logit - eager logit| on one image: the first
    calibration image when there is one, else a fixed random one), and per runtime the seconds of export,
    quantisation and compilation and what they chose. The exported files are kept in `workdir` when one is given
    (model.onnx, model.int8.onnx), else written to a temporary directory that is removed."""
    device = model_device(model)
    check_runtime(runtime, device)
    if runtime in INT8_RUNTIMES or calibration is not None:  # checked for every runtime: it is the probe
        calibration = _calibration_images(calibration, input_size, runtime)
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule wraps the network it compiled
    probe = (
        calibration[:1]
        if calibration is not None
        else torch.randn(1, *input_shape(input_size), generator=torch.Generator().manual_seed(1))
    )
    facts: dict[str, Any] = {}

    if runtime == "eager":
        model.eval()
        return Runner(runtime, _eager(model), device, facts)

    with evaluation_mode(model):
        expected = model(probe.to(device, model_dtype(model))).float()
    if runtime == "compiled":
        runner = Runner(runtime, _Compiled(copy.deepcopy(model).eval(), facts), device, facts)
    elif runtime.startswith("executorch"):
        runner = _prepare_executorch(runtime, model, input_size, calibration, workdir, device, facts)
    else:
        runner = _prepare_onnx(runtime, model, input_size, calibration, workdir, device, facts)
    facts[f"{runtime}/max_abs_diff"] = float(
        (runner(probe.to(device, model_dtype(model))).float() - expected).abs().max()
    )
    return runner


def _prepare_onnx(
    runtime: str,
    model: nn.Module,
    input_size: InputSize,
    calibration: torch.Tensor | None,
    workdir: str | Path | None,
    device: torch.device,
    facts: dict[str, Any],
) -> Runner:
    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="lnrepro-onnx-") as scratch:
        folder = Path(workdir) if workdir is not None else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.onnx"
        facts[f"{runtime}/export_s"] = _export_onnx(model, input_size, path)
        if runtime == "onnxruntime_int8":
            x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
            reduce_range = x86 and not cpu_features()["vnni"]
            start = time.perf_counter()
            _quantize(path, folder / "model.int8.onnx", calibration, reduce_range)
            facts[f"{runtime}/quantize_s"] = time.perf_counter() - start
            facts[f"{runtime}/reduce_range"] = reduce_range
            facts[f"{runtime}/calibration_images"] = int(calibration.shape[0])
            path = folder / "model.int8.onnx"
        model_bytes = path.read_bytes()  # the session is built from bytes, so the folder may go
    session = _session(model_bytes, device, allow_gpu=runtime == "onnxruntime")
    facts[f"{runtime}/model_bytes"] = len(model_bytes)
    facts[f"{runtime}/provider"] = session.get_providers()[0]
    facts[f"{runtime}/version"] = onnxruntime.__version__
    return Runner(runtime, _onnx_runner(session), device, facts)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def lower_to_executorch(model: nn.Module, input_size: InputSize, calibration: torch.Tensor | None = None) -> bytes:
    """The ExecuTorch program (.pte bytes) of a float32 CPU copy of `model` in eval mode, lowered to the XNNPACK
    delegate, for batches of `EXECUTORCH_MAX_BATCH` images. With `calibration` (normalised images),
    int8: PT2E static quantisation with XNNPACK's quantizer (symmetric, per-channel weights, activation ranges
    observed on `calibration`), then the same lowering, so XNNPACK runs the quantised operators in int8.

    This is the ExecuTorch tutorial's path (torch.export, to_edge_transform_and_lower with XnnpackPartitioner and
    its transform passes, to_executorch), written out here because no library wraps it for an arbitrary nn.Module.
    Operators XNNPACK does not take stay in the program and run on ExecuTorch's portable kernels."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.utils.configs import get_transform_passes
    from executorch.exir import to_edge_transform_and_lower

    exported = copy.deepcopy(model).float().cpu().eval()
    images = torch.randn(EXECUTORCH_MAX_BATCH, *input_shape(input_size), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # export and quantisation flows warn about their own deprecations
        try:
            program = torch.export.export(exported, (images,))
            if calibration is not None:
                program = torch.export.export(_quantized_pt2e(exported, program, calibration), (images,))
        except Exception as error:  # the network's failure, told in one line with the layer where it can be found
            raise _executorch_refusal(model, exported, images, error, "exported with torch.export for") from error
        try:
            lowered = to_edge_transform_and_lower(
                program, partitioner=[XnnpackPartitioner()], transform_passes=get_transform_passes()
            )
            return lowered.to_executorch().buffer
        except Exception as error:
            raise _executorch_refusal(model, exported, images, error, "lowered to") from error


def _executorch_refusal(
    model: nn.Module, exported: nn.Module, images: torch.Tensor, error: Exception, step: str
) -> UserInputError:
    """One line: which step failed, the first line of torch's or ExecuTorch's reason, and the layer that runs the
    operator it names (an `aten.<op>` in the message), so that only this runtime is lost and the user knows what
    to replace."""
    match = re.search(r"aten\.(\w+)", str(error))
    layer = _unsupported_layer(exported, images, f"aten::{match.group(1)}") if match else None
    return UserInputError(
        f"{type(model).__name__} cannot be {step} ExecuTorch/XNNPACK: {_first_line(error)}"
        + (f" (in {layer})" if layer else "")
        + "; replace that operation, or leave the ExecuTorch runtimes out for this network"
    )


def _quantized_pt2e(model: nn.Module, program: torch.export.ExportedProgram, calibration: torch.Tensor) -> nn.Module:
    """PT2E static int8 quantisation of `model` with XNNPACK's quantizer, its observers calibrated on
    `calibration`. The observed graph is exported with a dynamic batch axis so that calibration runs in batches of
    `_CALIBRATION_BATCH` (image by image it took minutes at 224x224); a network whose export cannot keep the batch
    dynamic is calibrated image by image on `program`, its batch-1 export."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batch = min(_CALIBRATION_BATCH, max(2, calibration.shape[0]))
    try:
        graph = torch.export.export(
            model, (calibration[:1].expand(batch, -1, -1, -1),), dynamic_shapes=({0: torch.export.Dim("batch")},)
        ).module()
    except Exception:  # e.g. a reshape that fixes the batch: the batch-1 program calibrates as well, only slower
        graph, batch = program.module(), EXECUTORCH_MAX_BATCH
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(graph, quantizer)
    chunks = list(calibration.split(batch))
    if batch > 1 and chunks[-1].shape[0] == 1:  # torch.export's dynamic batch starts at 2: no chunk of one image
        tail = chunks.pop()
        chunks = [*chunks[:-1], torch.cat([chunks[-1], tail])] if chunks else [tail.expand(2, -1, -1, -1)]
    with torch.no_grad():
        for images in chunks:
            prepared(images)
    return convert_pt2e(prepared)


def _undelegated_ops(program: bytes) -> int:
    """Operators of the program's forward plan that are not XNNPACK delegate calls (they run on portable kernels)."""
    from executorch.exir._serialize import _deserialize_pte_binary

    plan = _deserialize_pte_binary(program).program.execution_plan[0]
    return sum(
        1
        for chain in plan.chains
        for instruction in chain.instructions
        if type(instruction.instr_args).__name__ == "KernelCall"
    )


def _set_executorch_threads(threads: int) -> int:
    """ExecuTorch's XNNPACK thread pool set to `threads` (torch's CPU thread count, as ONNX Runtime gets); the
    pool is process-wide and must be set before a program is loaded. Returns the count it reports."""
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:  # a reset logs a line to stderr each time
        portable_lib._unsafe_reset_threadpool(threads)
    return int(portable_lib._threadpool_get_thread_count())


def executorch_runner(program: bytes | str | Path, enable_etdump: bool = False):
    """A callable from a float NCHW batch to logits (torch tensor on the batch's device) running the ExecuTorch
    program `program` (.pte bytes or path) on the CPU; batches larger than the program's bound run in chunks of
    `EXECUTORCH_MAX_BATCH`. The loaded program is the callable's `.program` (its event trace, with
    `enable_etdump`, is written by `.program.write_etdump_result_to_file`). Loading a .pte runs no Python code."""
    from executorch.runtime import Runtime

    threads = _set_executorch_threads(torch.get_num_threads())  # a .pte runs as the profile ran it, anywhere
    loaded = Runtime.get().load_program(
        program if isinstance(program, bytes) else Path(program), enable_etdump=enable_etdump, debug_buffer_size=0
    )
    method = loaded.load_method("forward")

    def run(images: torch.Tensor) -> torch.Tensor:
        chunks = images.detach().to("cpu", torch.float32).contiguous().split(EXECUTORCH_MAX_BATCH)
        # clone: an output may live in the program's planned memory, which the next chunk overwrites
        logits = torch.cat([method.execute([chunk])[0].clone() for chunk in chunks])
        return logits if images.device.type == "cpu" else logits.to(images.device)

    run.program, run.threads = loaded, threads
    # The loaded program reads the bytes in place (executorch 1.5.1 does not copy them): they must live as long
    # as the program, or later calls read freed memory (seen as shape errors inside the delegate).
    run.buffer = program
    return run


def _prepare_executorch(
    runtime: str,
    model: nn.Module,
    input_size: InputSize,
    calibration: torch.Tensor | None,
    workdir: str | Path | None,
    device: torch.device,
    facts: dict[str, Any],
) -> Runner:
    """`model` as an ExecuTorch program on XNNPACK (int8 for executorch_int8), run on the CPU whatever the
    network's device (ExecuTorch is a CPU/mobile runtime here). The .pte is kept in `workdir` when one is given."""
    from importlib.metadata import version

    int8 = runtime == "executorch_int8"
    start = time.perf_counter()
    program = lower_to_executorch(model, input_size, calibration if int8 else None)
    facts[f"{runtime}/export_s"] = time.perf_counter() - start
    if int8:
        facts[f"{runtime}/calibration_images"] = int(calibration.shape[0])
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        (Path(workdir) / ("model.int8.pte" if int8 else "model.pte")).write_bytes(program)
    run = executorch_runner(program)
    facts[f"{runtime}/threads"] = run.threads
    facts[f"{runtime}/model_bytes"] = len(program)
    facts[f"{runtime}/max_batch"] = EXECUTORCH_MAX_BATCH
    facts[f"{runtime}/undelegated_ops"] = _undelegated_ops(program)
    facts[f"{runtime}/version"] = version("executorch")
    return Runner(runtime, run, device, facts)


# --- measuring -----------------------------------------------------------------------------------------------------
def measure_runtime(
    runtime: str,
    model: nn.Module,
    input_size: InputSize,
    batch_size: int = 64,
    runs: int = 50,
    throughput_runs: int = 10,
    warmup: int = 5,
    calibration: torch.Tensor | None = None,
    workdir: str | Path | None = None,
    test_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Prepare `model` in `runtime` and time it, with torch's current thread count (ONNX Runtime gets the same).

    - `prepare/<runtime>_s`: seconds from nothing to a runner that has run once at batch 1 and once at
      `batch_size` (export, quantisation, compilation of both shapes, session creation, lazy initialisation):
      what adding this runtime to a profile costs.
    - `latency/<runtime>_ms`, `latency/<runtime>_p90_ms`: `lnrepro.profiling.timing.latency` of the runner, the
      median and 90th percentile of `runs` timed batch-1 passes after `warmup` untimed ones.
    - `infer/<runtime>_imgs_per_s`: `lnrepro.profiling.timing.inference_throughput` of the runner, `throughput_runs`
      timed passes at `batch_size` after min(warmup, 2) untimed ones (as `measured_metrics` does).
    - `latency/<runtime>_cpu_pressure` (`cpu_pressure()` just after the batch-1 passes, None without PSI) and
      `latency/<runtime>_contended` (`contended(...)` of those passes).
    - the runner's facts (see `prepare`) and `cpu/<feature>` of `cpu_features()`;
    - with `test_batches` ((images, labels) as eager sees them), `test/acc_<runtime>` of the same runner.
    The caller's train/eval mode comes back afterwards; the timed inputs are random normal images."""
    check_runtime(runtime, model_device(model))
    for name, value, least in (
        ("batch_size", batch_size, 1),
        ("runs", runs, 1),
        ("throughput_runs", throughput_runs, 1),
        ("warmup", warmup, 0),
    ):
        check_integer(name, value, least)
    device = model_device(model)
    with evaluation_mode(model):
        one, batch = random_input(model, 1, input_size), random_input(model, batch_size, input_size)
        start = time.perf_counter()
        runner = prepare(runtime, model, input_size, calibration=calibration, workdir=workdir)
        runner(one)
        runner(batch)
        synchronize(device)
        prepare_s = time.perf_counter() - start
        timed = latency(model, input_size, runs=runs, warmup=warmup, run=runner)
        pressure = cpu_pressure()
        speed = inference_throughput(
            model, batch_size, input_size, runs=throughput_runs, warmup=min(warmup, 2), run=runner
        )
    metrics: dict[str, Any] = {
        f"prepare/{runtime}_s": prepare_s,
        f"latency/{runtime}_ms": timed.median_ms,
        f"latency/{runtime}_p90_ms": timed.p90_ms,
        f"infer/{runtime}_imgs_per_s": speed.images_per_s,
        f"latency/{runtime}_cpu_pressure": pressure,
        f"latency/{runtime}_contended": contended(timed.median_ms, timed.p90_ms, pressure),
        **runner.facts,
    }
    if test_batches is not None:
        metrics[f"test/acc_{runtime}"] = runtime_accuracy(runner, test_batches)
    metrics.update({f"cpu/{key}": value for key, value in cpu_features().items()})
    return metrics


def runtime_accuracy(
    runner: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> float:
    """Top-1 accuracy (a fraction, micro: correct / total images) of `runner` over (images, labels) batches,
    images normalised as eager sees them: `test/acc_<runtime>`, comparable with `test/acc`."""
    correct = total = 0
    for images, labels in batches:
        predicted = runner(images).argmax(dim=-1).cpu()
        correct += int((predicted == labels.cpu()).sum())
        total += int(labels.numel())
    if total == 0:
        raise UserInputError("runtime_accuracy got no images: the batches were empty")
    return correct / total
