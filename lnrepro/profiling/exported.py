"""The files a user ships: each deployment runtime's exported network, kept in a run's `export/` folder beside
`export.json`, and read back to be evaluated (`lnrepro-eval exported=<file>`).

Writing: `measured_metrics(..., export_dir=...)` measures each runtime inside `kept_export`, which gives
`runtimes.prepare` a scratch folder and, once the runtime has been measured without an error, moves the one file a
user ships into the export folder (`EXPORTED_FILES`: no intermediate `.pre.onnx`, no fp32 `model.onnx` that only
int8 was quantised from). `write_manifest` then writes `export.json`: which file belongs to which runtime, and what
a program feeding the file must know (input size, normalisation, class count and names).

Reading: `load_exported(path)` opens an `.onnx` with ONNX Runtime or a `.pte` with ExecuTorch, from the file's
bytes. Both runtimes read their file as data (a protobuf graph, a flatbuffer program) and run only their own
kernels: no Python code in the file runs, and an ONNX file's external-data references cannot be followed from bytes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lnrepro.errors import UserInputError
from lnrepro.profiling.context import shape_text
from lnrepro.utils.files import atomic_write_text, atomic_writer

log = logging.getLogger(__name__)

#: The folder of a run (or profile) directory that holds the exported files.
EXPORT_DIR = "export"
#: The file beside them that says what they are.
MANIFEST = "export.json"
MANIFEST_FORMAT = 1
#: The file `runtimes.prepare(..., workdir=...)` leaves for each runtime that exports one, kept under its own name.
EXPORTED_FILES = {
    "onnxruntime": "model.onnx",
    "onnxruntime_int8": "model.int8.onnx",
    "executorch": "model.pte",
    "executorch_int8": "model.int8.pte",
}
#: How a program must prepare the images the files take (the same as eager PyTorch saw them in the run).
INPUT_CONTRACT = (
    "float32 N x C x H x W, RGB, pixel values scaled to [0, 1], then (value - mean) / std per channel; "
    "output: N x num_classes logits"
)


# --- writing -------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def kept_export(export_dir: str | Path | None, runtime: str) -> Iterator[Path | None]:
    """The `workdir` to measure `runtime` with (None where nothing is kept: no `export_dir`, or a runtime that
    exports no file). When the block ends without an exception, the runtime's file is copied atomically into
    `export_dir` (a copy that fails, a full disk, is one warning: the figures stand); when it raises, nothing is
    kept and a file of that name from an earlier attempt is removed, so the folder never offers a file this run
    did not measure."""
    name = EXPORTED_FILES.get(runtime)
    if export_dir is None or name is None:
        yield None
        return
    target = Path(export_dir) / name
    target.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"lnrepro-export-{runtime}-") as scratch:
        yield Path(scratch)
        try:
            with open(Path(scratch) / name, "rb") as source, atomic_writer(target) as file:
                shutil.copyfileobj(source, file, length=1 << 20)
        except OSError as error:  # the runtime's figures stand; only its file is missing from the folder
            log.warning("the %s file is not kept in %s: %s", runtime, export_dir, error)


def data_facts(datamodule: Any) -> dict[str, Any]:
    """The normalisation and class names a data module knows (its `mean`, `std` and `class_names`; None for what
    it does not say)."""
    names = getattr(datamodule, "class_names", None)
    return {
        "mean": _floats(getattr(datamodule, "mean", None)),
        "std": _floats(getattr(datamodule, "std", None)),
        "class_names": [str(name) for name in names] if names else None,
    }


def _floats(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else [float(value) for value in values]


def write_manifest(
    export_dir: str | Path,
    measured: Iterable[str],
    input_size: Sequence[int],
    num_classes: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    class_names: Sequence[str] | None = None,
    **about: Any,
) -> Path | None:
    """`export.json` for the files of the runtimes in `measured` (those measured without an error) that are in
    `export_dir`; a file of another runtime (an earlier attempt's) is removed, so the folder holds exactly what the
    manifest lists. `about`: what names the network (model, width, config_digest, calibration, ...). Returns the
    manifest's path, or None (and no folder) when no runtime left a file."""
    folder = Path(export_dir)
    measured = set(measured)
    files = {
        runtime: name for runtime, name in EXPORTED_FILES.items() if runtime in measured and (folder / name).is_file()
    }
    for runtime, name in EXPORTED_FILES.items():
        if runtime not in files:
            (folder / name).unlink(missing_ok=True)
    if not files:
        (folder / MANIFEST).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # only when empty: never a user's own files
            folder.rmdir()
        return None
    from lnrepro import __version__

    manifest = {
        "format": MANIFEST_FORMAT,
        "files": files,
        "input_size": [int(size) for size in input_size],
        "num_classes": int(num_classes),
        "class_names": list(class_names) if class_names else None,
        "mean": _floats(mean),
        "std": _floats(std),
        "input": INPUT_CONTRACT,
        **about,
        "lnrepro_version": __version__,
    }
    return atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")


# --- reading -------------------------------------------------------------------------------------------------------
@dataclass
class ExportedNetwork:
    """An exported file opened in its runtime: `run(images)` -> logits, with what the file and its manifest say
    about its input and output."""

    path: Path
    runtime: str
    input_size: tuple[int, int, int]  # C, H, W, read from the file itself
    num_classes: int  # read from the file itself
    run: Callable[[torch.Tensor], torch.Tensor]
    manifest: dict[str, Any]  # export.json beside the file ({} without one)

    @property
    def mean(self) -> list[float] | None:
        return self.manifest.get("mean")

    @property
    def std(self) -> list[float] | None:
        return self.manifest.get("std")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """`export.json` beside the exported file `path` ({} when there is none), its values checked: a manifest that
    is not one is refused in one line, naming it."""
    manifest_path = Path(path).parent / MANIFEST
    if not manifest_path.is_file():
        return {}
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserInputError(f"{manifest_path} cannot be read as JSON ({error}); remove it or export again") from error
    if not isinstance(manifest, dict):
        raise UserInputError(f"{manifest_path} is not an export manifest (a JSON object); remove it or export again")
    problems = []
    size = manifest.get("input_size")
    if size is not None and not (_ints(size) and len(size) == 3):
        problems.append(f"input_size {size!r} is not [C, H, W]")
    count = manifest.get("num_classes")
    if count is not None and not _ints([count]):
        problems.append(f"num_classes {count!r} is not a positive integer")
    for key in ("mean", "std"):
        values = manifest.get(key)
        if values is not None and not (
            isinstance(values, list)
            and values
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        ):
            problems.append(f"{key} {values!r} is not a list of numbers")
    std = manifest.get("std")
    if not problems and std is not None and any(v == 0 for v in std):
        problems.append("std holds a zero")
    if not problems and manifest.get("mean") is not None and std is not None and len(manifest["mean"]) != len(std):
        problems.append("mean and std differ in length")
    files = manifest.get("files")
    if files is not None and not (isinstance(files, dict) and all(isinstance(v, str) for v in files.values())):
        problems.append("files is not {runtime: file name}")
    if problems:
        raise UserInputError(f"{manifest_path}: {'; '.join(problems)}; remove it or export again")
    return manifest


def _ints(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def exported_runtime(path: Path, manifest: dict[str, Any]) -> str:
    """The runtime that runs `path`: its suffix decides the runtime (.onnx: ONNX Runtime, .pte: ExecuTorch), the
    manifest (else the `.int8.` in the name) whether it is the int8 export, which names its figures."""
    listed = {name: runtime for runtime, name in (manifest.get("files") or {}).items()}
    if path.name in listed and listed[path.name] in EXPORTED_FILES:
        return listed[path.name]
    int8 = "_int8" if path.name.endswith((".int8.onnx", ".int8.pte")) else ""
    if path.suffix == ".onnx":
        return f"onnxruntime{int8}"
    if path.suffix == ".pte":
        return f"executorch{int8}"
    raise UserInputError(
        f"exported={path}: not an exported network (.onnx for ONNX Runtime, .pte for ExecuTorch); "
        f"a Lightning checkpoint goes to ckpt_path="
    )


def _onnx_shapes(model_bytes: bytes) -> tuple[list, list]:
    """The first input's and output's shapes of an ONNX graph (a dimension is an int, or its name when symbolic),
    read from the protobuf with the `onnx` package (parsing only, nothing runs)."""
    import onnx

    graph = onnx.load_model_from_string(model_bytes).graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]

    def dims(value) -> list:
        return [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim
        ]

    return dims(inputs[0]), dims(graph.output[0])


def _open_onnx(data: bytes) -> tuple[Callable, list, list]:
    from lnrepro.profiling.runtimes import onnx_runner

    input_shape, output_shape = _onnx_shapes(data)
    return onnx_runner(data, torch.device("cpu")), input_shape, output_shape


@contextlib.contextmanager
def _runtime_log() -> Iterator[list[str]]:
    """What a runtime writes to the process's stderr (file descriptor 2, where ExecuTorch's C++ runtime logs) while
    a user's file is opened, captured into the yielded list: a file it refuses then ends in our one line, with the
    runtime's own reason in it, rather than after lines of its log. Importing ExecuTorch makes torch's pytree
    logger warn about an enum of ExecuTorch's: quiet while this lasts too."""
    pytree = logging.getLogger("torch.utils._pytree")
    level, lines, python_side = pytree.level, [], io.StringIO()
    pytree.setLevel(logging.ERROR)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        # ExecuTorch's Python bindings send its log through sys.stderr, a native library writes to the descriptor
        with tempfile.TemporaryFile() as capture, contextlib.redirect_stderr(python_side):
            os.dup2(capture.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                capture.seek(0)
                lines.extend(capture.read().decode("utf-8", "replace").splitlines())
                lines.extend(python_side.getvalue().splitlines())
    finally:
        os.close(saved)
        pytree.setLevel(level)


def _open_pte(data: bytes) -> tuple[Callable, list, list]:
    from lnrepro.profiling.runtimes import executorch_runner

    run = executorch_runner(data)
    meta = run.program.metadata("forward")
    if meta.num_inputs() != 1 or meta.num_outputs() < 1:
        raise ValueError(f"its forward method takes {meta.num_inputs()} inputs, not one image batch")
    return run, list(meta.input_tensor_meta(0).sizes()), list(meta.output_tensor_meta(0).sizes())


def load_exported(path: str | Path) -> ExportedNetwork:
    """The exported file `path` (.onnx or .pte) opened on the CPU in its runtime, from its bytes. A missing file,
    a runtime that is not installed, a file its runtime cannot load, a file that does not take one batch of
    C x H x W images to N x classes logits, and a manifest beside it that describes another file are each refused
    in one line."""
    from lnrepro.profiling.runtimes import check_runtime

    path = Path(path).expanduser()
    exported_runtime(path, {})  # an unknown suffix is refused before the file is looked for
    if not path.is_file():
        raise UserInputError(f"exported={path}: no such file; give the path of a file in a run's export/ folder")
    manifest = read_manifest(path)
    runtime = exported_runtime(path, manifest)
    try:
        check_runtime(runtime)
    except UserInputError as error:
        raise UserInputError(f"exported={path}: {error}") from error
    data = path.read_bytes()
    opener = _open_pte if path.suffix == ".pte" else _open_onnx
    runtime_log: list[str] = []
    try:
        with _runtime_log() as runtime_log:
            run, input_shape, output_shape = opener(data)
    except ImportError:  # a missing name of lnrepro's own is a bug, not a bad file
        raise
    except Exception as error:  # each runtime raises its own kinds for a file it cannot read: all mean "not this"
        kind = "an ExecuTorch program" if path.suffix == ".pte" else "an ONNX model"
        reader = "ExecuTorch" if path.suffix == ".pte" else "ONNX Runtime"
        text = [line.strip() for line in runtime_log + str(error).strip().splitlines() if line.strip()]
        reason = "; ".join(text)[:300] if text else type(error).__name__
        raise UserInputError(
            f"exported={path} is not {kind} that {reader} can load ({reason}); "
            f"export it again (lnrepro-train or lnrepro-profile with profile.export=true)"
        ) from error
    for line in runtime_log:
        log.debug("%s: %s", runtime, line)
    if len(input_shape) != 4 or not all(isinstance(d, int) and d > 0 for d in input_shape[1:]):
        raise UserInputError(f"exported={path} takes input of shape {input_shape}, not a batch of C x H x W images")
    if len(output_shape) != 2 or not isinstance(output_shape[1], int) or output_shape[1] < 1:
        raise UserInputError(f"exported={path} gives output of shape {output_shape}, not N x classes logits")
    network = ExportedNetwork(path, runtime, tuple(input_shape[1:]), int(output_shape[1]), run, manifest)
    _check_manifest_matches(network)
    return network


def _check_manifest_matches(network: ExportedNetwork) -> None:
    """A manifest that describes another network than the file's (copied from elsewhere) is refused: its
    normalisation would be another network's too."""
    manifest, where = network.manifest, network.path.parent / MANIFEST
    size, count = manifest.get("input_size"), manifest.get("num_classes")
    if size is not None and tuple(size) != network.input_size:
        raise UserInputError(
            f"{where} says input {shape_text(size)} but {network.path.name} takes {shape_text(network.input_size)}: "
            f"the manifest belongs to another export; remove it or put the file beside its own"
        )
    if count is not None and count != network.num_classes:
        raise UserInputError(
            f"{where} says {count} classes but {network.path.name} gives {network.num_classes}: the manifest "
            f"belongs to another export; remove it or put the file beside its own"
        )


def check_fits_data(network: ExportedNetwork, input_size: Sequence[int], num_classes: int, data_name: str) -> None:
    """Refuse, in one line naming both, a file whose input size or class count is not the data's."""
    input_size = tuple(int(size) for size in input_size)
    if network.input_size != input_size:
        raise UserInputError(
            f"exported={network.path} takes {shape_text(network.input_size)} images but data={data_name} gives "
            f"{shape_text(input_size)}: evaluate it on data of its own size (data.image_size)"
        )
    if network.num_classes != num_classes:
        raise UserInputError(
            f"exported={network.path} has {network.num_classes} classes but data={data_name} has {num_classes}: "
            f"evaluate it on data with its classes (data.num_classes)"
        )


def renormalized(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    data_mean: Sequence[float],
    data_std: Sequence[float],
    mean: Sequence[float],
    std: Sequence[float],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches normalised with the data's (mean, std), normalised instead with the file's: x' = (x * data_std +
    data_mean - mean) / std per channel. Batches pass unchanged when the two agree."""
    if list(map(float, data_mean)) == list(map(float, mean)) and list(map(float, data_std)) == list(map(float, std)):
        yield from batches
        return

    def column(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)

    for images, labels in batches:
        shift, scale = column(data_mean, images) - column(mean, images), column(std, images)
        yield (images * column(data_std, images) + shift) / scale, labels


def evaluation_metrics(
    run: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, float]:
    """`test/acc`, `test/acc5` and `test/loss` of `run` over (images, labels) batches, as the Lightning module
    reports them for a checkpoint: micro top-1 and top-min(5, classes), cross-entropy averaged over images. Top-1
    is the arg-max prediction, as `runtimes.runtime_accuracy` computes `test/acc_<runtime>`, so the same file on
    the same images gives the same figure."""
    correct = correct5 = total = 0
    loss = 0.0
    for images, labels in batches:
        logits = run(images).float().cpu()
        labels = labels.cpu()
        correct += int((logits.argmax(dim=-1) == labels).sum())
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        correct5 += int((top == labels[:, None]).any(dim=-1).sum())
        loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        total += int(labels.numel())
    if total == 0:
        raise UserInputError("the test split holds no images: nothing to evaluate")
    return {"test/acc": correct / total, "test/acc5": correct5 / total, "test/loss": loss / total}
