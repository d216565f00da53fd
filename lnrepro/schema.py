"""metrics.json: the one schema of what every run writes, and the one place that reads and writes it.

Every key the project writes is declared below with its unit; the EfficiencyProfile callback, the train, eval and
profile tasks and the reports spell keys through these constants. `write_metrics` stamps `schema_version` and the
lnrepro version that wrote the file and writes it atomically; `read_metrics` reads any version (files written
before the schema had a version read as version 0, with the same keys). `docs/METRICS.md` is this table rendered
(`python -m lnrepro.schema`).

This module needs only the standard library, so that the reports and light tools can import it.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lnrepro.utils.files import atomic_write_text

log = logging.getLogger("lnrepro")

#: Version 0: files without `schema_version` (before 2026-11-30); version 1: the first table. In both, accuracies are
#: torchmetrics' default per-class mean (equal to top-1 only on balanced labels) and latency is eager only
#: (`latency_ms`, `onnx/latency_ms`: `LEGACY_KEYS`). Version 2: true top-1/top-5; latency per runtime. Version 3:
#: peak memory named for its unit, `memory/peak_mib` and `memory/infer_peak_mib` (were `..._mb`, holding MiB).
SCHEMA_VERSION = 3
#: The first version whose accuracies are true top-1 (reports mark older ones).
TRUE_TOP1_SINCE = 2
FILENAME = "metrics.json"


@dataclass(frozen=True)
class Key:
    name: str  # a literal key, or a pattern such as `<stage>/loss` for a family of keys
    unit: str
    meaning: str

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(
            "^"
            + re.sub(r"<[a-z_]+>", "[A-Za-z0-9_.-]+", re.escape(self.name).replace(r"\<", "<").replace(r"\>", ">"))
            + "$"
        )


KEYS: dict[str, Key] = {}


def _key(name: str, unit: str, meaning: str) -> str:
    KEYS[name] = Key(name, unit, meaning)
    return name


# --- the file itself ---------------------------------------------------------------------------------------------
SCHEMA = _key("schema_version", "-", "version of this table the file follows (missing: 0, before versions)")
LNREPRO_VERSION = _key("lnrepro_version", "-", "version of lnrepro that wrote the file")
TASK = _key("task", "-", "train | eval | profile")

# --- what was run ------------------------------------------------------------------------------------------------
MODEL = _key("model", "-", "model family (registry name)")
WIDTH = _key("width", "-", "width multiplier")
CONV = _key("conv", "-", "conv kind of families with the switch: standard | dwpw | ghost")
GROUPS = _key("groups", "-", "ShuffleNet V1 group count")
STEM = _key("stem", "-", "input stem: cifar | imagenet")
DATA = _key("data", "-", "data config name")
MODEL_OPTION = _key(
    "model/<option>",
    "-",
    "a family option as the network was built (dropout, and the family's own, e.g. shallow, shuffle, ghost_ratio)",
)
SEED = _key("seed", "-", "the run's random seed")
CONFIG_DIGEST = _key(
    "config_digest",
    "-",
    "hash of the run's config without its seed, paths, loggers and profile "
    "settings: runs that differ only in seed share it (reports average them)",
)
EPOCHS = _key("epochs", "epochs", "epochs trained")
GLOBAL_STEP = _key("global_step", "steps", "optimizer steps taken")
CKPT_PATH = _key("ckpt_path", "path", "the checkpoint eval.py evaluated")
EXPORTED = _key("exported", "path", "the exported file eval.py evaluated (exported=...: .onnx or .pte)")
EXPORTED_RUNTIME = _key(
    "exported/runtime", "-", "the runtime that ran the exported file (its test/acc is test/acc_<runtime> of its run)"
)
TEST_CKPT_PATH = _key("test/ckpt_path", "path", "the checkpoint train.py tested (the best one)")
RESUMED_FROM = _key(
    "resumed_from",
    "path",
    "the checkpoint training continued from: the furthest that loads of the run directory's own last.ckpt (a "
    "requeued or restarted job), ckpt_path= and its own epoch_*.ckpt; null: a fresh start",
)

# --- processes and the cluster job (lnrepro.training.distributed) -----------------------------------------------
WORLD_SIZE = _key("world_size", "processes", "training processes (DDP ranks) over all nodes; 1 without DDP")
BATCH_SIZE_GLOBAL = _key(
    "batch_size_global", "images", "data.batch_size: images per optimizer step over all processes (the recipe's batch)"
)
BATCH_SIZE_PER_PROCESS = _key(
    "batch_size_per_process", "images", "batch_size_global / world_size: what each process's DataLoader serves"
)
SLURM_JOB_ID = _key("slurm/job_id", "-", "SLURM job id (SLURM_JOB_ID; an array task has its own); absent outside SLURM")
SLURM_ARRAY_JOB_ID = _key(
    "slurm/array_job_id",
    "-",
    "the array's job id (SLURM_ARRAY_JOB_ID), shared by the jobs of one sweep; absent outside arrays",
)
SLURM_ARRAY_TASK_ID = _key("slurm/array_task_id", "-", "index of the job in its array (SLURM_ARRAY_TASK_ID)")
SLURM_RESTART_COUNT = _key(
    "slurm/restart_count",
    "count",
    "times SLURM had requeued the job before this run (SLURM_RESTART_COUNT; 0: first run)",
)

# --- accuracy and loss (logged by the LightningModule) ----------------------------------------------------------
_key(
    "<stage>/loss",
    "nats",
    "cross-entropy of the train, val or test split (train: label smoothing/mixup "
    "included), epoch mean; train/loss_step and train/loss_epoch: Lightning's per-step and per-epoch copies",
)
_key("<stage>/loss_<when>", "nats", "see <stage>/loss")
_key("<stage>/acc", "fraction", "top-1 accuracy (0-1) of the split")
_key("<stage>/acc5", "fraction", "top-5 accuracy (0-1) of the split")
TEST_ACC = "test/acc"
_key("lr-<optimizer>", "-", "learning rate at the end of the run (Lightning's LearningRateMonitor)")
_key("lr-<optimizer>/<group>", "-", "the same, per parameter group (pg1: decayed weights, pg2: norms and biases)")
VAL_ACC_BEST = _key("val/acc_best", "fraction", "best val/acc over the epochs so far")

# --- static counts, one image (lnrepro.profiling.counts) -------------------------------------------------------
PARAMS = _key("params", "count", "parameters")
PARAMS_TRAINABLE = _key("params_trainable", "count", "parameters with requires_grad")
PARAMS_CONV = _key("params_conv", "count", "parameters of Conv2d layers only (as the ghost_vs_dwpw table counts them)")
MACS = _key("macs", "multiply-adds", "multiply-adds of one image (torch's FlopCounterMode / 2)")
MACS_CONV = _key("macs_conv", "multiply-adds", "multiply-adds of Conv2d layers only")
FLOPS = _key("flops", "FLOPs", "2 x macs")
FLOPS_CONV = _key("flops_conv", "FLOPs", "2 x macs_conv")
_key(
    "macs/<convention>",
    "multiply-adds",
    "one image under a paper's counting convention: conv_linear, with_norm, "
    "with_elementwise (lnrepro.profiling.conventions; profile.flop_conventions=true)",
)
_key("macs/matching_convention", "-", "the convention the published figure matches (within 3%), if one does")
_key("macs/published", "multiply-adds", "the published figure from the shipped reference tables")
MAC_BYTES = _key("mac_bytes", "bytes", "ShuffleNet V2's memory access cost: conv/linear inputs + outputs + weights")

# --- speed during training (EfficiencyProfile) ------------------------------------------------------------------
TRAIN_EPOCH_S = _key(
    "train/epoch_s",
    "s",
    "median training seconds per epoch (validation excluded; epoch 0 left out when there are others)",
)
VAL_EPOCH_S = _key("val/epoch_s", "s", "median seconds of one validation pass")
TRAIN_IMGS_PER_S = _key(
    "train/imgs_per_s",
    "images/s",
    "training throughput: measured over the fit (train.py, after warm-up steps) or on random batches (profile)",
)
FIT_S = _key("fit_s", "s", "wall seconds of train.py's fit and test, startup and end-of-fit profile excluded")
END_OF_FIT_PROFILE_S = _key(
    "end_of_fit_profile_s",
    "s",
    "wall seconds of the end-of-fit profile: every runtime's "
    "preparation, timing and test/acc_<runtime> (its cost beside fit_s)",
)

# --- measured on the network (lnrepro.profiling; end of fit and profile) ---------------------------------------
MEMORY_PEAK_MIB = _key(
    "memory/peak_mib",
    "MiB",
    "peak memory of training: CUDA max allocated over the fit; on the CPU, one profiled training step at `batch_size`",
)
MEMORY_INFER_PEAK_MIB = _key("memory/infer_peak_mib", "MiB", "peak memory of one inference batch at `batch_size`")

# --- per deployment runtime (lnrepro.profiling.runtimes) --------------------------------------------------------
#: The deployment runtimes a network is measured in, in the order tables list them: the one list of their names
#: (`profile.runtimes` takes any of them; `<runtime>` in the keys below is one of them).
RUNTIMES = ("eager", "compiled", "onnxruntime", "onnxruntime_int8", "executorch", "executorch_int8")
LATENCY = _key("latency/<runtime>_ms", "ms", "median batch-1 latency in the runtime")
LATENCY_P90 = _key("latency/<runtime>_p90_ms", "ms", "90th percentile of the same passes")
THROUGHPUT = _key("infer/<runtime>_imgs_per_s", "images/s", "inference throughput at `batch_size` in the runtime")
_key("latency/<runtime>_cpu_pressure", "%", "/proc/pressure/cpu `some avg10` right after the batch-1 passes")
CONTENDED = _key(
    "latency/<runtime>_contended", "bool", "p90/median > 1.5 or CPU pressure > 10%: another process took the cores"
)
_key(
    "prepare/<runtime>_s",
    "s",
    "from the network to a runner that ran once at both shapes: export, quantisation, compilation, session",
)
ACCURACY = _key(
    "test/acc_<runtime>",
    "fraction",
    "top-1 of the tested weights run in the runtime, on the test split's images as eager saw them",
)
_key("<runtime>/max_abs_diff", "logits", "largest |runtime - eager| logit on one image")
ERROR = _key("<runtime>/error", "-", "why the runtime's figures are missing (the run itself went on)")
_key("<runtime>/export_s", "s", "export: ONNX, or torch.export and lowering to XNNPACK (ExecuTorch)")
_key("<runtime>/quantize_s", "s", "int8 pre-processing and static quantisation")
_key("<runtime>/reduce_range", "bool", "7-bit weights (x86 CPU without VNNI)")
_key("<runtime>/calibration_images", "images", "images the int8 activation ranges were calibrated on")
_key("<runtime>/model_bytes", "bytes", "size of the exported file (.onnx or .pte)")
_key(
    "<runtime>/max_batch",
    "images",
    "ExecuTorch: the batch the .pte was exported for (larger batches run in chunks of it)",
)
_key("<runtime>/undelegated_ops", "ops", "ExecuTorch: operators XNNPACK did not take (run by portable kernels)")
_key("<runtime>/threads", "threads", "ExecuTorch: threads of its thread pool (torch's CPU thread count)")
_key("<runtime>/provider", "-", "ONNX Runtime execution provider")
_key("<runtime>/version", "-", "onnxruntime or executorch version")
_key("compile/<batch>_s", "s", "torch.compile's first call at one batch size (1, then the throughput batch)")
_key("compile/graphs", "count", "graphs compiled (0: this process had compiled the same network before)")
_key("compile/cache_warm", "bool", "inductor's cache already held the compiled code (its hit/miss counters)")
_key("cpu/<feature>", "-", "the CPU's model name and instruction-set features (avx2, avx512, vnni, amx, bf16)")

# --- the roofline's peaks on the measuring machine (lnrepro.profiling.roofline, cached per CPU and threads) -------
ROOFLINE_GFLOPS = _key("roofline/gflops", "GFLOP/s", "fp32 peak: best of a large square torch.mm at `threads`")
ROOFLINE_GBPS = _key(
    "roofline/gbps", "GB/s", "memory bandwidth: best of a copy far beyond the last-level cache, bytes read + written"
)

# --- where the time goes: per-layer times (lnrepro.profiling.layer_times; profile.layers=true) -------------------
LAYERS_SUM = _key(
    "layers/<runtime>_sum_ms",
    "ms",
    "sum of the per-layer median times in layers/<runtime>.csv, to set beside layers/<runtime>_latency_ms (eager: "
    "the operators alone, without the Python between them)",
)
LAYERS_LATENCY = _key(
    "layers/<runtime>_latency_ms",
    "ms",
    "median batch-1 latency of the runtime without its profiler, timed with the profiled calls the per-layer times "
    "come from (call by call in turn at one thread, just before and after them with more): what their sum is to add "
    "up to",
)
LAYERS_ERROR = _key("layers/<runtime>_error", "-", "why the runtime's per-layer times are missing")

# --- the latency predictor (lnrepro.profiling.predictor; profile.predict, experiment=latency_predictor|budget) ------
LATENCY_PREDICTED = _key(
    "latency/<runtime>_predicted_ms",
    "ms",
    "batch-1 latency in the runtime predicted from the network's kernels by the predictor fitted on this machine",
)
_key("<runtime>/within_10pct", "fraction", "latency predictor, leave one family out: share within +-10% of measured")
_key("<runtime>/within_5pct", "fraction", "the same, within +-5%")
_key("<runtime>/spearman", "-", "the same: rank correlation of predicted and measured latency")
_key("<runtime>/median_error_pct", "%", "the same: median absolute error of the prediction, % of the measured latency")
_key("<runtime>/noise_pct", "%", "median spread (max - min over mean) of two measurements of one network")
_key("<runtime>/noise_p90_pct", "%", "90th percentile of that spread")
_key("<runtime>/networks", "count", "held-out networks the validation figures are over")
_key("<runtime>/<family>/<statistic>", "-", "one held-out family's validation figure (the statistics above)")
_key("predictor/<runtime>/<fact>", "-", "the fitted predictor's samples, cache folder and key (CPU, threads, versions)")
_key("predictor/stopped_early", "bool", "the fit stopped measuring at profile.predictor.max_minutes (rerun: resume)")
_key("predictor/measure_s", "s", "seconds this fit spent measuring")
_key("budget/<fact>", "-", "experiment=latency_budget: the budget, runtime and the chosen networks (budget.csv)")


def runtime_key(pattern: str, runtime: str) -> str:
    """The key of a `<runtime>` pattern above for one runtime: `runtime_key(LATENCY, "onnxruntime")`."""
    return pattern.replace("<runtime>", runtime)


def model_option_key(option: str) -> str:
    """`model/<option>` for one family option: `model_option_key("shallow")`."""
    return MODEL_OPTION.replace("<option>", option)


latency_key = functools.partial(runtime_key, LATENCY)
latency_p90_key = functools.partial(runtime_key, LATENCY_P90)
predicted_latency_key = functools.partial(runtime_key, LATENCY_PREDICTED)
throughput_key = functools.partial(runtime_key, THROUGHPUT)
accuracy_key = functools.partial(runtime_key, ACCURACY)
contended_key = functools.partial(runtime_key, CONTENDED)
error_key = functools.partial(runtime_key, ERROR)

LATENCY_MS, LATENCY_P90_MS, INFER_IMGS_PER_S = latency_key("eager"), latency_p90_key("eager"), throughput_key("eager")
#: Keys of files before version 2 (latency) or 3 (memory) -> their names now; `read_metrics` adds the new name beside
#: the old one.
LEGACY_KEYS = {
    "memory/peak_mb": MEMORY_PEAK_MIB,
    "memory/infer_peak_mb": MEMORY_INFER_PEAK_MIB,
    "latency_ms": LATENCY_MS,
    "latency_p90_ms": LATENCY_P90_MS,
    "infer/imgs_per_s": INFER_IMGS_PER_S,
    "onnx/latency_ms": latency_key("onnxruntime"),
    "onnx/latency_p90_ms": latency_p90_key("onnxruntime"),
    "onnx/max_abs_diff": "onnxruntime/max_abs_diff",
}

# --- the context every measured figure depends on (lnrepro.profiling.context) ----------------------------------
DEVICE = _key("device", "-", "cpu, or the GPU's name")
DTYPE = _key("dtype", "-", "parameter dtype of the measured network")
THREADS = _key("threads", "count", "torch CPU threads during the measurement")
BATCH_SIZE = _key(
    "batch_size",
    "images",
    "batch of the throughput and memory measurements (the profile's batch; the training batch is batch_size_global)",
)
INPUT_SIZE = _key("input_size", "CxHxW", "one input image")
TORCH_VERSION = _key("torch_version", "-", "torch version")

CONTEXT_KEYS = (DEVICE, DTYPE, THREADS, BATCH_SIZE, INPUT_SIZE, TORCH_VERSION)


def declared(name: str) -> bool:
    """Whether `name` is a key of this table (literally or through a pattern such as `<stage>/acc`)."""
    return name in KEYS or any("<" in key.name and key.pattern.match(name) for key in KEYS.values())


def undeclared(names) -> list[str]:
    return sorted(name for name in names if not declared(name))


def _plain(value: Any) -> Any:
    """JSON-ready: tensors and numpy scalars as Python numbers (duck-typed, no torch import), NaN/inf as null."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple):
        return list(value)
    return value


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> Path:
    """Write one flat JSON object (keys sorted, so that runs diff cleanly) with `schema_version` and
    `lnrepro_version`, atomically. `path`: the file, or the run directory that gets `metrics.json`."""
    from lnrepro import __version__

    path = Path(path)
    if path.suffix != ".json":
        path = path / FILENAME
    flat = {key: _plain(value) for key, value in metrics.items()}
    flat[SCHEMA] = SCHEMA_VERSION
    flat[LNREPRO_VERSION] = __version__
    unknown = undeclared(flat)
    if unknown:  # kept (a user's own module may log more), but named: the table above is the interface
        log.warning("metrics.json keys not declared in lnrepro.schema: %s", ", ".join(unknown))
    atomic_write_text(path, json.dumps(flat, indent=2, sort_keys=True) + "\n")
    log.info("metrics written to %s", path)
    return path


def read_metrics(path: str | Path) -> dict[str, Any]:
    """The metrics of one run (a metrics.json path or its run directory), any schema version; raises ValueError
    when the file is not a JSON object and OSError when it cannot be read."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    metrics = json.loads(path.read_text())
    if not isinstance(metrics, dict):
        raise ValueError("not a JSON object")
    metrics.setdefault(SCHEMA, 0)
    for old, new in LEGACY_KEYS.items():
        if old in metrics:
            metrics.setdefault(new, metrics[old])
    return metrics


#: Parts of a run's config that do not change what it computes; `config_digest` leaves them out.
NOT_IN_DIGEST = (
    "seed",
    "paths",
    "hydra",
    "tags",
    "print_config",
    "ckpt_path",
    "logger",
    "profile",
    "task_name",
    "optimized_metric",
)


def config_digest(config: dict[str, Any]) -> str:
    """12 hex digits naming a run's recipe: the config (unresolved, so `${seed}` and `${paths...}` stay
    placeholders) without `NOT_IN_DIGEST`. Runs of one `-m seed=0,1,2` sweep share it."""
    import hashlib

    kept = {key: value for key, value in config.items() if key not in NOT_IN_DIGEST}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --- run directories ------------------------------------------------------------------------------------------
def multirun_group(sweep_dir: str | Path) -> str | None:
    """`<task>/<sweep time>` for a multirun directory `logs/<task>/multiruns/<time>`, else None: the W&B group of
    that multirun's runs, and of its report."""
    sweep_dir = Path(sweep_dir).resolve()
    if sweep_dir.parent.name != "multiruns":
        return None
    return f"{sweep_dir.parent.parent.name}/{sweep_dir.name}"


def markdown() -> str:
    """This table as Markdown (docs/METRICS.md)."""
    lines = ["| key | unit | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{key.name}` | {key.unit} | {key.meaning} |" for key in KEYS.values()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(
        f"# metrics.json (schema version {SCHEMA_VERSION})\n\nWritten by `lnrepro.schema`; generated by "
        f"`python -m lnrepro.schema`.\n"
    )
    print(markdown(), end="")
