"""Batch-1 latency predicted from a network's kernels, by regressors fitted on this machine's own per-layer timings.

After nn-Meter (Zhang et al., MobiSys 2021): a network's latency in a runtime is the sum of its kernels' latencies,
each predicted by a regressor of its kind fitted on the target device, plus what the operators between them cost.

- **Kernels** (convolutions by kind: 1x1, depthwise, grouped, dense kxk, and fully connected layers): one
  gradient-boosting regressor per kind (scikit-learn's `HistGradientBoostingRegressor`), fitted on the rows of the
  runtime's own per-layer profile (`layer_times`: ONNX Runtime's fused Conv nodes, XNNPACK's operators, eager's
  torch calls), each row with its shape (`kernels.KernelShape`). Its target is the log of the kernel's time over
  its roofline bound (`roofline.roofline_bound_ms` at the machine's measured peaks): a ratio that varies slowly
  with shape, so that a tree, which cannot extrapolate, still scales a kernel larger than any it saw with the work
  it does.
- **Glue** (activations, additions, concatenations, shuffles, pooling, BatchNorm: `kernels.GLUE_GROUPS`) and the
  runtime's per-call overhead: a linear model with non-negative coefficients, per group a cost per call and per byte
  plus one intercept, fitted on whole networks' measured latencies minus their kernels' predictions (out of fold).
  Fusion is learned there: where a runtime folds ReLU into the convolution before it, the clamp group's cost comes
  out near zero; ONNX Runtime's layout reorders and int8 quantize nodes, which have no torch call, are paid through
  the groups they come with. Fitting it per row would need each fused node tied to torch calls, which the runtimes'
  profiles do not allow (XNNPACK keeps no module names).

A predictor is fitted for one runtime on one machine: `PredictorKey` (CPU model, thread count, runtime and torch
versions). It is kept in `utils.files.cache_dir()/predictor/<runtime>-<digest>/` (skops, which loads no code:
only the scikit-learn types listed in `TRUSTED_TYPES`), and a predictor of another key is refused with the command
that fits one here (`fit_command`). The measurements it was fitted on, and the sampling of networks, are in
`lnrepro.experiments.latency_predictor`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lnrepro import schema
from lnrepro.errors import UserInputError
from lnrepro.profiling.kernels import COMPUTE_KINDS, GLUE_NAMES, KernelShape, NetworkDescription
from lnrepro.utils.files import atomic_write_bytes, atomic_write_text, cache_dir

log = logging.getLogger(__name__)

#: Bump when the features, targets or file layout change: predictors of another version are fitted again.
FORMAT_VERSION = 2
PREDICTOR_DIR = "predictor"
MODEL_FILE = "predictor.skops"
KEY_FILE = "predictor.json"
#: The only types a predictor file may hold beyond skops's defaults (read with `skops.io.load(trusted=...)`).
TRUSTED_TYPES = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]
#: Runtimes a predictor can be fitted for: those whose per-layer times are measured (`layer_times.LAYER_RUNTIMES`).
PREDICTABLE = ("eager", "onnxruntime", "onnxruntime_int8", "executorch", "executorch_int8")
#: Kernel rows a kind needs for a regressor of its own; fewer share the one fitted on every kind.
MIN_KIND_ROWS = 30
#: Folds of the out-of-fold kernel predictions the glue model is fitted on.
FOLDS = 4


def fit_command(runtime: str, threads: int) -> str:
    """The command that fits a predictor for `runtime` at `threads` threads on this machine."""
    return (
        f"lnrepro-profile experiment=latency_predictor 'profile.runtimes=[{runtime}]' profile.threads={threads} "
        "(about 30 minutes on 2 cores; `profile.predictor.networks=12` for a quick, rougher one)"
    )


# --- what a predictor is keyed by ----------------------------------------------------------------------------------
def runtime_version(runtime: str) -> str:
    """The version of the package that runs `runtime` (torch's for eager)."""
    if runtime.startswith("onnxruntime"):
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    if runtime.startswith("executorch"):
        from importlib.metadata import version

        return f"executorch {version('executorch')}"
    return f"torch {torch.__version__}"


@dataclass(frozen=True)
class PredictorKey:
    """What a predictor's figures hold for: they are refused anywhere else."""

    runtime: str
    cpu_model: str
    threads: int
    runtime_version: str
    torch_version: str  # the exporter and the eager kernels
    format_version: int = FORMAT_VERSION

    @classmethod
    def here(cls, runtime: str, threads: int | None = None) -> PredictorKey:
        from lnrepro.profiling.cpu import cpu_features

        if runtime not in PREDICTABLE:
            raise UserInputError(
                f"no latency predictor for runtime {runtime!r}: only runtimes whose per-layer times are measured "
                f"can be predicted ({', '.join(PREDICTABLE)}); `compiled` fuses layers into generated kernels"
            )
        return cls(
            runtime,
            cpu_features()["model"],
            int(threads or torch.get_num_threads()),
            runtime_version(runtime),
            torch.__version__,
        )

    def digest(self) -> str:
        """Of the machine and runtime alone: a predictor of another format version is fitted again from the same
        folder's measurements."""
        fields = {name: value for name, value in dataclasses.asdict(self).items() if name != "format_version"}
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def folder(self, root: Path | None = None) -> Path:
        """This key's folder: the measurements of its fit and the fitted predictor."""
        return (root or cache_dir()) / PREDICTOR_DIR / f"{self.runtime}-{self.digest()}"

    def describe(self) -> str:
        return f"{self.cpu_model}, {self.threads} thread(s), {self.runtime_version}, torch {self.torch_version}"


# --- features ----------------------------------------------------------------------------------
def kernel_features(kernel: KernelShape) -> list[float]:
    """The regressors' features of one kernel (its shape, multiply-adds and bytes; logs where sizes span decades),
    with whether its channels fill the SIMD blocks runtimes lay channels out in (ONNX Runtime's NCHWc blocks of 8 on
    AVX2 and 16 on AVX-512, XNNPACK's tiles): ONNX Runtime runs a depthwise convolution of 105 channels (ShuffleNet
    V2 x1.5) outside its blocked kernels, ten times slower than its shape says."""
    per_group_in = max(1, kernel.in_channels // kernel.groups)
    return [
        kernel.in_channels % 8 == 0,
        kernel.in_channels % 16 == 0,
        kernel.out_channels % 8 == 0,
        kernel.out_channels % 16 == 0,
        per_group_in % 4 == 0,
        COMPUTE_KINDS.index(kernel.kind),
        math.log2(kernel.in_channels),
        math.log2(kernel.out_channels),
        math.log2(per_group_in),
        math.log2(max(1, kernel.out_channels // kernel.groups)),
        kernel.kernel,
        kernel.stride,
        math.log2(kernel.groups),
        math.log2(kernel.height * kernel.width),
        math.log2(kernel.batch),
        math.log2(kernel.macs + 1),
        math.log2(kernel.bytes + 1),
    ]


def glue_features(network: NetworkDescription) -> list[float]:
    """Per glue group the megabytes it moves; then the glue calls together (one cost per call: a runtime's dispatch
    of a node costs about the same whatever the node, and per-group call costs, fitted on a few dozen networks,
    take up what belongs to bytes), and the number of compute kernels (a runtime's per-kernel costs beyond the
    kernel itself: ONNX Runtime's layout reorders, int8's quantize and dequantize nodes)."""
    megabytes = [network.glue_bytes.get(name, 0) / 1e6 for name in GLUE_NAMES]
    calls = sum(network.glue_calls.get(name, 0) for name in GLUE_NAMES)
    return megabytes + [float(calls), float(len(network.kernels))]


GLUE_FEATURES = (*(f"{group}/ms_per_mb" for group in GLUE_NAMES), "glue/call_ms", "kernel/call_ms")


@dataclass(frozen=True)
class RooflinePeaks:
    """The two figures of `roofline.Peaks` a predictor keeps (measured when it was fitted)."""

    gflops: float
    gbps: float


def bound_ms(kernel: KernelShape, peaks: RooflinePeaks) -> float:
    """The roofline's least time for the kernel's work at the machine's peaks, with a floor of one microsecond."""
    from lnrepro.profiling.roofline import roofline_bound_ms

    return max(1e-3, roofline_bound_ms(kernel.macs, kernel.bytes, peaks))


# --- training data ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One measured network (or kernel stack) in one runtime: its torch-side description, the kernel rows of the
    runtime's per-layer profile, and its batch-1 latency measured twice (before and after the profiled passes)."""

    name: str  # e.g. "mobilenet_v2 w0.75 @128"
    family: str  # the held-out unit of validation ("kernels" for the kernel stacks, "baseline" for VGG/ResNets)
    network: NetworkDescription
    rows: list[tuple[KernelShape, float]]  # (kernel, median ms)
    latencies_ms: tuple[float, ...]

    @property
    def latency_ms(self) -> float:
        return float(np.mean(self.latencies_ms))

    @property
    def spread(self) -> float:
        """How far apart its repeated measurements are, relative to their mean: (max - min) / mean."""
        return (max(self.latencies_ms) - min(self.latencies_ms)) / self.latency_ms if self.latency_ms else 0.0


# --- the predictor ----------------------------------------------------------------------------------
def _regressor(rows: int):
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(
        max_iter=300, learning_rate=0.08, min_samples_leaf=max(3, min(20, rows // 20)), l2_regularization=1e-3
    )


class KernelModels:
    """One regressor per compute kind (and one for every kind together, for kinds with few rows)."""

    def __init__(self, peaks: RooflinePeaks) -> None:
        self.peaks = peaks
        self.models: dict[str, Any] = {}

    def fit(self, rows: Sequence[tuple[KernelShape, float]]) -> KernelModels:
        if not rows:
            raise UserInputError("no kernel rows to fit a latency predictor on: measure some networks first")
        features = np.array([kernel_features(kernel) for kernel, _ in rows])
        target = np.array([math.log(ms / bound_ms(kernel, self.peaks)) for kernel, ms in rows])
        self.models = {"all": _regressor(len(rows)).fit(features, target)}
        kinds = np.array([kernel.kind for kernel, _ in rows])
        for kind in COMPUTE_KINDS:
            chosen = kinds == kind
            if chosen.sum() >= MIN_KIND_ROWS:
                self.models[kind] = _regressor(int(chosen.sum())).fit(features[chosen], target[chosen])
        return self

    def predict(self, kernels: Sequence[KernelShape]) -> np.ndarray:
        """Milliseconds per kernel."""
        if not kernels:
            return np.zeros(0)
        features = np.array([kernel_features(kernel) for kernel in kernels])
        ratio = np.zeros(len(kernels))
        kinds = np.array([kernel.kind for kernel in kernels])
        for kind in set(kinds):
            chosen = kinds == kind
            ratio[chosen] = self.models.get(kind, self.models["all"]).predict(features[chosen])
        bounds = np.array([bound_ms(kernel, self.peaks) for kernel in kernels])
        return bounds * np.exp(ratio)


@dataclass
class Predictor:
    """A fitted latency predictor of one runtime on one machine."""

    key: PredictorKey
    kernels: KernelModels
    glue: Any  # sklearn LinearRegression(positive=True) on `glue_features`
    samples: int  # networks it was fitted on

    def predict_ms(self, network: NetworkDescription) -> float:
        """Predicted batch-1 latency in milliseconds: the kernels' sum plus the glue model's share (never below
        the kernels' sum alone)."""
        kernels = float(self.kernels.predict(network.kernels).sum())
        glue = float(self.glue.predict(np.array([glue_features(network)]))[0])
        return kernels + max(0.0, glue)

    def glue_costs(self) -> dict[str, float]:
        """The glue model's coefficients by feature name (ms per call, ms per MB moved; the intercept in ms)."""
        return {"intercept_ms": float(self.glue.intercept_), **dict(zip(GLUE_FEATURES, map(float, self.glue.coef_)))}

    # --- keeping it ---------------------------------------------------------------------------------------------
    def save(self, folder: Path | None = None) -> Path:
        import skops.io

        folder = folder or self.key.folder()
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "models": self.kernels.models,
            "peaks": [self.kernels.peaks.gflops, self.kernels.peaks.gbps],
            "glue": self.glue,
        }
        atomic_write_bytes(folder / MODEL_FILE, skops.io.dumps(state))
        facts = {"key": dataclasses.asdict(self.key), "samples": self.samples, "glue": self.glue_costs()}
        atomic_write_text(folder / KEY_FILE, json.dumps(facts, indent=1) + "\n")
        return folder

    @classmethod
    def load(cls, folder: Path) -> Predictor:
        import skops.io

        facts = json.loads((folder / KEY_FILE).read_text())
        data = (folder / MODEL_FILE).read_bytes()
        untrusted = [name for name in skops.io.get_untrusted_types(data=data) if name not in TRUSTED_TYPES]
        if untrusted:
            raise UserInputError(
                f"{folder / MODEL_FILE} holds types a latency predictor never has ({untrusted[0]}): delete the folder "
                "and fit again"
            )
        state = skops.io.loads(data, trusted=TRUSTED_TYPES)
        if not _well_formed(state):
            raise UserInputError(
                f"{folder / MODEL_FILE} is not a latency predictor lnrepro wrote: delete the folder and fit again"
            )
        kernels = KernelModels(RooflinePeaks(*state["peaks"]))
        kernels.models = state["models"]
        return cls(PredictorKey(**facts["key"]), kernels, state["glue"], int(facts["samples"]))


def _well_formed(state: Any) -> bool:
    """Whether a loaded predictor file holds what `Predictor.save` writes, with every tree's child and feature
    indices in range: scikit-learn walks a tree's nodes without bounds checks, so a crafted file could make it read
    outside its arrays (why skops leaves these trees untrusted by default)."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import LinearRegression

    features = len(kernel_features(KernelShape("conv", 1, 1, 1, 1, 1, 1, 1, 1, 1)))
    if not (isinstance(state, dict) and isinstance(state.get("models"), dict) and len(state.get("peaks", ())) == 2):
        return False
    glue = state.get("glue")
    if not isinstance(glue, LinearRegression) or np.shape(glue.coef_) != (len(GLUE_FEATURES),):
        return False
    for model in state["models"].values():
        if not isinstance(model, HistGradientBoostingRegressor):
            return False
        for trees in model._predictors:
            for tree in trees:
                nodes = tree.nodes
                inner = nodes["is_leaf"] == 0
                if len(nodes) == 0 or not (
                    (nodes["left"][inner] < len(nodes)).all()
                    and (nodes["right"][inner] < len(nodes)).all()
                    and (nodes["feature_idx"][inner] < features).all()
                ):
                    return False
    return True


def fit_predictor(key: PredictorKey, samples: Sequence[Sample], peaks: RooflinePeaks) -> Predictor:
    """Kernel regressors on every sample's kernel rows; the glue model on each sample's latency minus its kernels'
    predictions by regressors fitted without that sample's fold (in-sample predictions would leave the glue model
    residuals smaller than any new network's)."""
    from sklearn.linear_model import LinearRegression

    if len(samples) < 2:
        raise UserInputError(
            f"a latency predictor needs at least 2 measured networks, got {len(samples)}: "
            f"{fit_command(key.runtime, key.threads)}"
        )
    out_of_fold = np.zeros(len(samples))
    folds = min(FOLDS, len(samples))
    for fold in range(folds):
        held = [index for index in range(len(samples)) if index % folds == fold]
        kept = [row for index, sample in enumerate(samples) if index % folds != fold for row in sample.rows]
        models = KernelModels(peaks).fit(kept)
        for index in held:
            out_of_fold[index] = models.predict(samples[index].network.kernels).sum()
    latencies = np.array([sample.latency_ms for sample in samples])
    features = np.array([glue_features(sample.network) for sample in samples])
    # weights 1 / latency^2: least squares on relative errors, which is what "within 10%" judges
    glue = LinearRegression(positive=True).fit(features, latencies - out_of_fold, sample_weight=latencies**-2.0)
    kernels = KernelModels(peaks).fit([row for sample in samples for row in sample.rows])
    return Predictor(key, kernels, glue, len(samples))


# --- validation ----------------------------------------------------------------------------------
#: The families a network is held out by; the kernel stacks and the baselines (VGG16, ResNets) only ever train.
VALIDATION_FAMILIES = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3", "shufflenet_v1", "shufflenet_v2", "ghostnet")


@dataclass(frozen=True)
class HeldOut:
    name: str
    family: str
    measured_ms: float
    predicted_ms: float
    spread: float

    @property
    def error(self) -> float:
        return self.predicted_ms / self.measured_ms - 1


def leave_one_family_out(key: PredictorKey, samples: Sequence[Sample], peaks: RooflinePeaks) -> list[HeldOut]:
    """Each network of the six lightweight families predicted by a predictor fitted without its family."""
    held: list[HeldOut] = []
    for family in VALIDATION_FAMILIES:
        test = [sample for sample in samples if sample.family == family]
        train = [sample for sample in samples if sample.family != family]
        if not test or len(train) < 2:
            continue
        predictor = fit_predictor(key, train, peaks)
        held += [HeldOut(s.name, family, s.latency_ms, predictor.predict_ms(s.network), s.spread) for s in test]
    return held


def validation_metrics(runtime: str, held: Sequence[HeldOut]) -> dict[str, Any]:
    """`<runtime>/within_10pct`, `within_5pct` (shares), `spearman` (rank correlation of predicted and measured),
    `noise_pct` (median spread of two measurements of one network, % of its mean) and `noise_p90_pct`, and the same
    per held-out family (`<runtime>/<family>/...`)."""
    from scipy.stats import spearmanr

    def summary(prefix: str, rows: Sequence[HeldOut]) -> dict[str, Any]:
        errors = np.array([abs(row.error) for row in rows])
        spreads = np.array([row.spread for row in rows])
        rank = (
            spearmanr([r.predicted_ms for r in rows], [r.measured_ms for r in rows]).statistic
            if len(rows) > 2
            else None
        )
        return {
            f"{prefix}/networks": len(rows),
            f"{prefix}/within_10pct": float((errors <= 0.10).mean()),
            f"{prefix}/within_5pct": float((errors <= 0.05).mean()),
            f"{prefix}/median_error_pct": float(100 * np.median(errors)),
            f"{prefix}/spearman": None if rank is None or math.isnan(rank) else float(rank),
            f"{prefix}/noise_pct": float(100 * np.median(spreads)),
            f"{prefix}/noise_p90_pct": float(100 * np.quantile(spreads, 0.9)),
        }

    if not held:
        return {}
    metrics = summary(runtime, held)
    for family in VALIDATION_FAMILIES:
        rows = [row for row in held if row.family == family]
        if rows:
            metrics.update(summary(f"{runtime}/{family}", rows))
    return metrics


# --- using a fitted predictor ----------------------------------------------------------------------------------
_LOADED: dict[Path, Predictor] = {}


def load_predictor(runtime: str, threads: int | None = None) -> Predictor:
    """The predictor fitted for `runtime` at `threads` (None: torch's) on this machine, from the cache; refused in
    one line, naming the command that fits one, where there is none or only predictors of other machines."""
    key = PredictorKey.here(runtime, threads)
    folder = key.folder()
    if folder in _LOADED:
        return _LOADED[folder]
    if not (folder / MODEL_FILE).is_file():
        others = sorted((cache_dir() / PREDICTOR_DIR).glob(f"{runtime}-*/{KEY_FILE}"))
        found = ""
        for path in others:
            try:
                found = PredictorKey(**json.loads(path.read_text())["key"]).describe()
                break
            except (OSError, ValueError, TypeError, KeyError):
                continue
        where = f"the one in {cache_dir() / PREDICTOR_DIR} was fitted on {found}, not on " if found else "none for "
        raise UserInputError(
            f"no latency predictor for {runtime} here ({where}{key.describe()}): fit one with "
            f"{fit_command(runtime, key.threads)}"
        )
    try:
        predictor = Predictor.load(folder)
    except UserInputError:
        raise
    except Exception as error:  # a truncated or foreign file: fitting again is the fix
        raise UserInputError(
            f"the latency predictor in {folder} cannot be read ({type(error).__name__}): delete the folder and fit "
            f"again with {fit_command(runtime, key.threads)}"
        ) from error
    if predictor.key != key:
        raise UserInputError(
            f"the latency predictor in {folder} was fitted on {predictor.key.describe()}, not here: fit one with "
            f"{fit_command(runtime, key.threads)}"
        )
    _LOADED[folder] = predictor
    return predictor


def predict_latencies(
    network: NetworkDescription, runtimes: Iterable[str], threads: int | None = None
) -> dict[str, float]:
    """runtime -> predicted batch-1 milliseconds of `network` (`kernels.describe`), each runtime's predictor loaded
    (or refused) as `load_predictor` says."""
    return {runtime: load_predictor(runtime, threads).predict_ms(network) for runtime in runtimes}


def forget_loaded() -> None:
    """Drop the predictors loaded in this process (after a fit replaced one)."""
    _LOADED.clear()


def prediction_metrics(
    network: NetworkDescription, runtimes: Iterable[str], threads: int | None
) -> Mapping[str, float]:
    return {
        schema.predicted_latency_key(runtime): ms
        for runtime, ms in predict_latencies(network, runtimes, threads).items()
    }
