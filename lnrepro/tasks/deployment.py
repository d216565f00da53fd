"""The tested network in each deployment runtime (`profile.runtimes`), shared by the train and eval tasks: int8
calibrated on the run's training images, each runtime's accuracy on the test split beside eager's, and the files a
user ships (`profile.export`): each measured runtime's exported file in the run's `export/` with `export.json`,
uploaded as one W&B artifact of the run where it logs to W&B."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lnrepro import schema
from lnrepro.errors import UserInputError
from lnrepro.loggers import wandb_loggers
from lnrepro.profiling import ProfileSettings, evaluation_mode, measured_metrics
from lnrepro.profiling.exported import EXPORT_DIR, EXPORTED_FILES, MANIFEST, data_facts, write_manifest
from lnrepro.profiling.measure import torch_threads
from lnrepro.profiling.runtimes import INT8_RUNTIMES
from lnrepro.tasks.common import log

#: What names the network in export.json, read from the run's metrics (run_facts and the config digest).
ABOUT_KEYS = (
    schema.MODEL,
    schema.WIDTH,
    schema.CONV,
    schema.GROUPS,
    schema.STEM,
    schema.DATA,
    schema.SEED,
    schema.CONFIG_DIGEST,
    schema.CKPT_PATH,
    schema.TEST_CKPT_PATH,
)


def calibration_source(datamodule: pl.LightningDataModule, count: int):
    """The training images int8 calibrates on: `calibration_set` (the training images with the evaluation
    transform) where the data module augments on the CPU, else its training set. `count` (profile.calibration_images)
    more than it holds is refused."""
    if getattr(datamodule, "train_set", None) is None:
        datamodule.setup("fit")  # our data modules set up once: fit will not read the data again
    images = getattr(datamodule, "calibration_set", None) or datamodule.train_set
    if count > len(images):
        raise UserInputError(
            f"profile.calibration_images={count} is more than the {len(images)} training images: "
            f"use at most {len(images)}"
        )
    return images


def check_calibration(settings: ProfileSettings, datamodule: pl.LightningDataModule) -> None:
    """A calibration set larger than the training data is refused before anything is trained."""
    if settings.end_of_fit and set(INT8_RUNTIMES) & set(settings.runtimes) and hasattr(datamodule, "train_set"):
        calibration_source(datamodule, settings.calibration_images)


def data_batches(datamodule: pl.LightningDataModule, loader, device: torch.device) -> Iterator[tuple]:
    """(images, labels) of `loader` exactly as the network sees them in evaluation: moved to `device` and through
    the data module's on-device step (normalisation, no augmentation outside training)."""
    for batch in loader:
        yield datamodule.on_after_batch_transfer(datamodule.transfer_batch_to_device(batch, device, 0), 0)


def calibration_images(datamodule: pl.LightningDataModule, count: int, device: torch.device) -> torch.Tensor:
    """`count` training images drawn at random (seeded) as the network sees them in evaluation: int8's
    calibration set. Data modules whose training set is augmented on the CPU offer `calibration_set`, the same
    images with the evaluation transform; in-memory ones augment on the device only while training."""
    images = calibration_source(datamodule, count)
    # A random sample, not the first images: folder datasets are sorted by class.
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:count].sort().values
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(images, chosen.tolist()),
        batch_size=min(count, 256),
        collate_fn=getattr(datamodule, "collate_fn", None),
    )
    return torch.cat([batch_images for batch_images, _ in data_batches(datamodule, loader, device)])


def runtime_figures(
    settings: ProfileSettings,
    net: torch.nn.Module,
    image_size: int,
    datamodule: pl.LightningDataModule,
    tested: bool,
    run_dir: str | Path | None = None,
    about: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Latency and throughput of the trained network in each of `profile.runtimes`, calibrated on the run's
    training images, and with `tested`, `test/acc_<runtime>` on the test split (the deployed accuracy beside
    `test/acc`). A runtime that fails leaves `<runtime>/error`: the fit's results are kept whatever happens.

    With `run_dir` and `profile.export`, the exported file of each runtime measured without an error is kept in
    `run_dir/export/` with `export.json` (`keep_export`); `about`: the run's metrics, whose `ABOUT_KEYS` name the
    network there. `profile.predict` adds `latency/<runtime>_predicted_ms`; `profile.measure=false` measures
    nothing (the predictions alone)."""
    if not settings.end_of_fit or not settings.runtimes:
        return {}
    figures: dict[str, Any] = {}
    if settings.predict:  # the predictors were checked before the fit (ProfileSettings.check_predictors)
        from lnrepro.profiling.kernels import describe
        from lnrepro.profiling.predictor import prediction_metrics

        figures.update(
            prediction_metrics(describe(net, (3, image_size, image_size)), settings.runtimes, settings.threads)
        )
    if not settings.measure:
        return figures
    device = next(net.parameters()).device
    calibration, runtimes = None, list(settings.runtimes)
    int8 = [runtime for runtime in runtimes if runtime in INT8_RUNTIMES]
    if int8:  # one calibration set for every int8 runtime: the same training images
        try:
            calibration = calibration_images(datamodule, settings.calibration_images, device)
        except UserInputError as error:  # int8 goes without; the other runtimes are still measured
            for runtime in int8:
                log.warning("%s figures are missing: %s", runtime, error)
                figures[schema.error_key(runtime)] = str(error)
                runtimes.remove(runtime)
    test_batches = (lambda: data_batches(datamodule, datamodule.test_dataloader(), device)) if tested else None
    export_dir = Path(run_dir) / EXPORT_DIR if run_dir is not None and settings.export else None
    figures.update(
        measured_metrics(
            net,
            (3, image_size, image_size),
            dataclasses.replace(settings, runtimes=runtimes, train=False, memory=False),
            training_speed=False,
            calibration=calibration,
            test_batches=test_batches,
            keep_going=True,
            export_dir=export_dir,
        )
    )
    if export_dir is not None:
        keep_export(export_dir, figures, runtimes, net, (3, image_size, image_size), datamodule, about or {})
    if settings.layers and run_dir is not None:
        figures.update(end_of_fit_layer_times(settings, net, image_size, runtimes, calibration, Path(run_dir)))
    return figures


def end_of_fit_layer_times(
    settings: ProfileSettings,
    net: torch.nn.Module,
    image_size: int,
    runtimes: list[str],
    calibration: torch.Tensor | None,
    run_dir: Path,
) -> dict[str, Any]:
    """With `profile.layers=true`, each layer of the trained network timed in each runtime that can report it,
    as `lnrepro-profile` does: `run_dir/layers/<runtime>.csv`, timing the files export/ kept rather than
    exporting again. Off by default: it costs seconds per runtime (conf/profile/default.yaml). Eager per-layer
    timing is CPU only, so a network trained on a GPU is timed in the deployed runtimes alone; a runtime that
    fails leaves `layers/<runtime>_error`, and the fit's results are kept whatever happens."""
    from lnrepro.profiling.layer_times import layer_times

    measured = [runtime for runtime in runtimes if not (runtime == "eager" and next(net.parameters()).is_cuda)]
    exported = {runtime: run_dir / EXPORT_DIR / name for runtime, name in EXPORTED_FILES.items()}
    try:
        with torch_threads(settings.threads):
            return layer_times(
                net,
                (3, image_size, image_size),
                measured,
                run_dir,
                calibration=calibration,
                runs=settings.runs,
                warmup=settings.warmup,
                exported={runtime: path for runtime, path in exported.items() if path.is_file()},
                keep_going=True,
            )
    except Exception as error:  # the per-layer account is a courtesy: the fit's own figures are already safe
        log.warning("per-layer times are missing: %s: %s", type(error).__name__, error)
        return {}


def keep_export(
    export_dir: Path,
    figures: Mapping[str, Any],
    runtimes: list[str],
    net: torch.nn.Module,
    input_size: tuple[int, int, int],
    datamodule: Any,
    about: Mapping[str, Any],
    calibration: str = "training images",
) -> Path | None:
    """export.json for the files `measured_metrics` kept in `export_dir` (those of `runtimes` without a
    `<runtime>/error` in `figures`), with the data module's normalisation and class names and the class count of
    `net`'s output (what the files give, whatever the data module calls it); `calibration`: what int8 was
    calibrated on. Returns its path, or None when no file was kept (and no folder is left)."""
    facts = data_facts(datamodule)
    measured = [runtime for runtime in runtimes if schema.error_key(runtime) not in figures]
    with evaluation_mode(net):
        parameter = next(net.parameters())
        classes = net(torch.zeros(1, *input_size, device=parameter.device, dtype=parameter.dtype)).shape[-1]
    path = write_manifest(
        export_dir,
        measured,
        input_size,
        classes,
        facts["mean"],
        facts["std"],
        facts["class_names"],
        **{key: about[key] for key in ABOUT_KEYS if about.get(key) is not None},
        int8_calibration=calibration,
    )
    if path is not None:
        log.info("exported files kept in %s: %s", export_dir, ", ".join(json.loads(path.read_text())["files"].values()))
    return path


def upload_export(trainer: pl.Trainer, settings: ProfileSettings, run_dir: str | Path) -> None:
    """The export folder `runtime_figures` kept as one artifact (type `model`, named `export-<W&B run id>`,
    export.json as its metadata) of each W&B run the trainer logs to; offline, it waits in the run's files for
    `wandb sync`. Rank 0 only; a failure is one warning: the run's results never depend on W&B."""
    manifest = Path(run_dir) / EXPORT_DIR / MANIFEST
    if not (settings.end_of_fit and settings.export and trainer.is_global_zero and manifest.is_file()):
        return
    for logger in wandb_loggers(trainer):
        try:
            import wandb

            run = logger.experiment
            artifact = wandb.Artifact(
                f"export-{run.id}",
                type="model",
                description="the network as exported for deployment (lnrepro profile.export)",
                metadata=json.loads(manifest.read_text(encoding="utf-8")),
            )
            artifact.add_dir(str(manifest.parent))
            run.log_artifact(artifact)
        except Exception as error:  # W&B's own errors, a file that went away: the run's files are already kept
            log.warning("the export folder was not logged to W&B: %s: %s", type(error).__name__, error)
