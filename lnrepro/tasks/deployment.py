"""The tested network in each deployment runtime (`profile.runtimes`), shared by the train and eval tasks: int8
calibrated on the run's training images, and each runtime's accuracy on the test split beside eager's."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch

from lnrepro.errors import UserInputError
from lnrepro.profiling import ProfileSettings, measured_metrics
from lnrepro.tasks.common import log


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
    if settings.end_of_fit and "onnxruntime_int8" in settings.runtimes and hasattr(datamodule, "train_set"):
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
    settings: ProfileSettings, net: torch.nn.Module, image_size: int, datamodule: pl.LightningDataModule, tested: bool
) -> dict[str, Any]:
    """Latency and throughput of the trained network in each of `profile.runtimes`, calibrated on the run's
    training images, and with `tested`, `test/acc_<runtime>` on the test split (the deployed accuracy beside
    `test/acc`). A runtime that fails leaves `<runtime>/error`: the fit's results are kept whatever happens."""
    if not settings.end_of_fit or not settings.runtimes:
        return {}
    device = next(net.parameters()).device
    figures: dict[str, Any] = {}
    calibration, runtimes = None, list(settings.runtimes)
    if "onnxruntime_int8" in runtimes:
        try:
            calibration = calibration_images(datamodule, settings.calibration_images, device)
        except UserInputError as error:  # int8 goes without; the other runtimes are still measured
            log.warning("onnxruntime_int8 figures are missing: %s", error)
            figures["onnxruntime_int8/error"] = str(error)
            runtimes.remove("onnxruntime_int8")
    test_batches = (lambda: data_batches(datamodule, datamodule.test_dataloader(), device)) if tested else None
    figures.update(
        measured_metrics(
            net,
            (3, image_size, image_size),
            dataclasses.replace(settings, runtimes=runtimes, train=False, memory=False),
            training_speed=False,
            calibration=calibration,
            test_batches=test_batches,
            keep_going=True,
        )
    )
    return figures
