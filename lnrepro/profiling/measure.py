"""What to measure (`ProfileSettings`, the `profile` config group) and all measurements of one network as one
flat dict under the keys of `lnrepro.schema`.

The same settings drive the end-of-fit profile of a training run (the EfficiencyProfile callback) and the profile
entry point (`lnrepro-profile`), so a batch size or thread count set once holds for both.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lnrepro import schema
from lnrepro.errors import UserInputError, check_integer
from lnrepro.profiling.context import InputSize, input_shape, measurement_context, shape_text
from lnrepro.profiling.counts import MacCount, count_macs, count_parameters
from lnrepro.profiling.exported import kept_export
from lnrepro.profiling.memory import inference_peak_memory, training_peak_memory
from lnrepro.profiling.runtimes import RUNTIMES, check_runtime, measure_runtime
from lnrepro.profiling.timing import training_throughput

log = logging.getLogger(__name__)


@functools.cache
def _declared_defaults() -> dict[str, Any]:
    from omegaconf import OmegaConf  # a dependency of the package; imported only when settings are first made

    text = (files("lnrepro.conf") / "profile" / "default.yaml").read_text(encoding="utf-8")
    return OmegaConf.to_container(OmegaConf.create(text))


@dataclass(frozen=True)
class ProfileSettings:
    """The `profile` config group. Its defaults, and what each setting means, are declared once, in
    conf/profile/default.yaml (shipped in the package as `lnrepro.conf`): `from_config` starts from that file, so
    plain Python (`measured_metrics(model, 32)`, `ProfileSettings.from_config({"runs": 100})`) measures what
    `lnrepro-profile` measures, without Hydra. Build settings with `from_config`; the fields have no defaults here."""

    device: str  # lnrepro-profile only; the end-of-fit profile measures where the network trained
    batch_size: int  # throughput and peak memory (latency is always batch 1)
    runs: int  # timed batch-1 passes for latency
    throughput_runs: int  # timed batches for throughput
    warmup: int  # untimed passes before timing
    threads: int | None  # torch CPU threads while measuring (None: as they are)
    runtimes: list[str]  # latency/throughput in each
    calibration_images: int  # training images that calibrate onnxruntime_int8's activation ranges
    train: bool  # training peak memory, and (lnrepro-profile) training throughput
    memory: bool
    layers: bool  # lnrepro-profile prints the per-layer table
    predict: bool  # lnrepro-profile: latency/<runtime>_predicted_ms from the fitted latency predictor
    measure: bool  # lnrepro-profile: false measures nothing (counts and predictions only)
    flop_conventions: bool  # lnrepro-profile: multiply-adds counted the ways papers count them
    end_of_fit: bool  # train.py: measure the trained network after the fit
    export: bool  # keep each measured runtime's exported file in the run's export/ (lnrepro.profiling.exported)

    def __post_init__(self) -> None:
        for name, least in (
            ("batch_size", 1),
            ("runs", 1),
            ("throughput_runs", 1),
            ("warmup", 0),
            ("calibration_images", 1),
        ):
            check_integer(f"profile.{name}", getattr(self, name), least)
        check_integer("profile.threads", self.threads, 1, none_allowed=True)
        unknown = [runtime for runtime in self.runtimes if runtime not in RUNTIMES]
        if unknown:
            raise UserInputError(f"profile.runtimes: unknown runtime {unknown[0]!r}; choose from {', '.join(RUNTIMES)}")

    def check_runtimes(self, device: str | torch.device = "cpu") -> None:
        """Refuse, before anything is trained or measured, a runtime whose package or compiler is missing."""
        for runtime in self.runtimes:
            check_runtime(runtime, device)

    def check_predictors(self) -> None:
        """With `predict`, refuse before any work a runtime that has no latency predictor fitted on this machine at
        this thread count (the line names the command that fits one)."""
        if self.predict:
            from lnrepro.profiling.predictor import load_predictor

            for runtime in self.runtimes:
                load_predictor(runtime, self.threads)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None) -> ProfileSettings:
        """The declared defaults with the values of `config` (the `profile` config node, a DictConfig or dict, or
        some of its keys; None: the defaults alone). An unknown key is refused in one line."""
        if config is not None and not isinstance(config, dict):
            from omegaconf import OmegaConf  # only when a DictConfig can have come in

            config = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)
        values = {**copy.deepcopy(_declared_defaults()), **(config or {})}
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise UserInputError(
                f"profile.{unknown[0]} is not a profile setting; the settings are: {', '.join(sorted(fields))}"
            )
        runtimes = values["runtimes"]
        values["runtimes"] = [] if runtimes is None else [runtimes] if isinstance(runtimes, str) else list(runtimes)
        return cls(**values)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to `threads` inside the block (None: unchanged), restored after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def static_metrics(model: nn.Module, input_size: InputSize, macs: MacCount | None = None) -> dict[str, int]:
    """Parameters, multiply-adds, FLOPs (= 2 x multiply-adds) and memory access cost for one image.
    `macs`: `count_macs(model, input_size)` when the caller already has it (it is not counted twice)."""
    params = count_parameters(model)
    macs = macs or count_macs(model, input_size)
    return {
        schema.PARAMS: params.total,
        schema.PARAMS_TRAINABLE: params.trainable,
        schema.PARAMS_CONV: params.conv,
        schema.MACS: macs.macs,
        schema.MACS_CONV: macs.conv_macs,
        schema.FLOPS: macs.flops,
        schema.FLOPS_CONV: macs.conv_flops,
        schema.MAC_BYTES: macs.mac_bytes,
    }


LAYER_COLUMNS = ["layer", "type", "macs", "flops", "params", "output_shape", "mac_bytes"]


def layer_rows(macs: MacCount) -> list[list[Any]]:
    """The per-layer breakdown of `count_macs` as table rows under `LAYER_COLUMNS` (FLOPs = 2 x multiply-adds,
    output shape as "CxHxW", memory access cost in bytes, 0 for layers other than Conv2d/Linear)."""
    return [
        [
            layer.name,
            layer.type,
            layer.macs,
            2 * layer.macs,
            layer.params,
            shape_text(layer.output_shape),
            layer.mac_bytes,
        ]
        for layer in macs.layers
    ]


def measured_metrics(
    model: nn.Module,
    input_size: InputSize,
    settings: ProfileSettings | None = None,
    training_speed: bool = True,
    calibration: torch.Tensor | None = None,
    test_batches: Callable[[], Iterable] | None = None,
    keep_going: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    export_dir: str | Path | None = None,
) -> dict[str, Any]:
    """What `settings` asks for, on the device and dtype where the model is, with `settings.threads`:

    - for each of `settings.runtimes`, latency at batch 1 (`runs` timed passes) and throughput at `batch_size`
      (`lnrepro.profiling.runtimes.measure_runtime`); with `test_batches` (a function giving (images, labels)
      batches, images as eager sees them), `test/acc_<runtime>` for every runtime but eager; `calibration`:
      images for onnxruntime_int8 (None: `calibration_images` random ones). With `keep_going`, a runtime that
      fails leaves `<runtime>/error` instead of its figures (a finished fit keeps its results); `progress(runtime,
      done, total)` is called as each runtime starts and once more at the end; with `export_dir`, the exported
      file of each runtime measured without an error is kept there (`lnrepro.profiling.exported.kept_export`);
    - peak memory of inference (`memory/infer_peak_mib`) and, with `train`, of training (`memory/peak_mib`);
      with `train` and `training_speed`, training throughput (a fit passes False: it measured its own)."""
    settings = settings or ProfileSettings.from_config()
    batch, runs, warmup = settings.batch_size, settings.throughput_runs, min(settings.warmup, 2)
    metrics: dict[str, Any] = {}
    if calibration is None and settings.runtimes:  # made once, not once per runtime
        calibration = _random_calibration(settings.calibration_images, input_size)
    with torch_threads(settings.threads):
        for done, runtime in enumerate(settings.runtimes):
            if progress is not None:
                progress(runtime, done, len(settings.runtimes))
            try:
                with kept_export(export_dir, runtime) as workdir:
                    figures = measure_runtime(
                        runtime,
                        model,
                        input_size,
                        batch_size=batch,
                        runs=settings.runs,
                        throughput_runs=runs,
                        warmup=settings.warmup,
                        calibration=calibration,
                        workdir=workdir,
                        test_batches=test_batches() if test_batches is not None and runtime != "eager" else None,
                    )
                metrics.update(figures)
            except Exception as error:  # one runtime's failure must not cost the run's other figures
                if not keep_going:
                    raise
                reason = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
                metrics[f"{runtime}/error"] = reason
                log.warning("runtime %s failed, its figures are missing: %s", runtime, reason)
        if progress is not None:
            progress("done", len(settings.runtimes), len(settings.runtimes))
        if settings.train and training_speed:
            metrics[schema.TRAIN_IMGS_PER_S] = training_throughput(
                model, batch, input_size, runs=runs, warmup=warmup
            ).images_per_s
        if settings.memory:
            metrics[schema.MEMORY_INFER_PEAK_MIB] = inference_peak_memory(model, batch, input_size).peak_mib
            if settings.train:  # without it there is no training figure: the key stays out rather than mislead
                metrics[schema.MEMORY_PEAK_MIB] = training_peak_memory(model, batch, input_size).peak_mib
        metrics.update(measurement_context(model, batch, input_size))
    return metrics


def _random_calibration(count: int, input_size: InputSize) -> torch.Tensor:
    """Stand-in calibration images where no data is read (lnrepro-profile): int8 figures of speed are meaningful,
    its accuracy is not (train.py and eval.py calibrate on the run's training images)."""
    return torch.randn(count, *input_shape(input_size), generator=torch.Generator().manual_seed(0))


def profile_model(
    model: nn.Module,
    input_size: InputSize,
    settings: ProfileSettings | None = None,
    macs: MacCount | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    export_dir: str | Path | None = None,
) -> dict[str, Any]:
    """`static_metrics` (with `macs` when the caller has counted them) and `measured_metrics` together
    (`export_dir`: as `measured_metrics` takes it)."""
    return {
        **static_metrics(model, input_size, macs=macs),
        **measured_metrics(model, input_size, settings, progress=progress, export_dir=export_dir),
    }
