"""The training task: the one place that wires data, network, module, callbacks, loggers and trainer."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from lnrepro import schema
from lnrepro.callbacks.efficiency_profile import publish
from lnrepro.errors import UserInputError
from lnrepro.profiling import ProfileSettings, measured_metrics
from lnrepro.schema import write_metrics
from lnrepro.tasks.common import hydra_multirun_name, log
from lnrepro.training import ClassificationModule, distributed
from lnrepro.utils.checkpoint import check_matches, load_checkpoint
from lnrepro.utils.instantiate import (
    close_loggers,
    instantiate,
    instantiate_callbacks,
    instantiate_loggers,
    logger_callbacks,
)
from lnrepro.utils.rich_config import print_config_tree


def build_module(cfg: DictConfig, for_training: bool = True) -> ClassificationModule:
    net = instantiate(cfg.model)
    return ClassificationModule(
        net=net,
        optimizer=instantiate(cfg.optimizer) if for_training else None,
        scheduler=instantiate(cfg.scheduler) if for_training and cfg.get("scheduler") else None,
        num_classes=cfg.data.num_classes,
        **OmegaConf.to_container(cfg.get("module", {}), resolve=True),
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )


def run_facts(cfg: DictConfig) -> dict[str, Any]:
    """What a report needs to name the run, next to its numbers."""
    return {
        schema.MODEL: cfg.model.get("name"),
        schema.WIDTH: cfg.model.get("width"),
        schema.CONV: cfg.model.get("conv"),
        schema.GROUPS: cfg.model.get("groups"),
        schema.STEM: cfg.model.get("stem"),
        schema.DATA: cfg.data.get("name"),
        schema.SEED: cfg.get("seed"),
    }


def fit_and_test(
    cfg: DictConfig, trainer: pl.Trainer, module: ClassificationModule, datamodule: pl.LightningDataModule
) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    if cfg.get("train", True):
        log.info("training %s", cfg.model.name)
        trainer.fit(
            module,
            datamodule=datamodule,
            ckpt_path=cfg.get("ckpt_path"),
            weights_only=not cfg.get("trust_checkpoint", False),
        )
        metrics.update(trainer.callback_metrics)
    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning("no best checkpoint was saved: testing the current weights")
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)  # our own file
        metrics.update(trainer.callback_metrics)
        metrics[schema.TEST_CKPT_PATH] = best or None

    # Callbacks that measure the run (EfficiencyProfile) leave their final figures in a `metrics` dict.
    for callback in trainer.callbacks:
        if isinstance(getattr(callback, "metrics", None), dict):
            metrics.update(callback.metrics)
    metrics.update(run_facts(cfg))
    metrics.update(
        {
            schema.TASK: "train",
            schema.EPOCHS: trainer.current_epoch,
            schema.GLOBAL_STEP: trainer.global_step,
            schema.CONFIG_DIGEST: schema.config_digest(OmegaConf.to_container(cfg, resolve=False)),
        }
    )
    return metrics


def calibration_source(datamodule: pl.LightningDataModule):
    """The training images int8 calibrates on: `calibration_set` (the training images with the evaluation
    transform) where the data module augments on the CPU, else its training set."""
    if getattr(datamodule, "train_set", None) is None:
        datamodule.setup("fit")  # our data modules set up once: fit will not read the data again
    return getattr(datamodule, "calibration_set", None) or datamodule.train_set


def check_calibration(settings: ProfileSettings, datamodule: pl.LightningDataModule) -> None:
    """A calibration set larger than the training data is refused before anything is trained."""
    if settings.end_of_fit and "onnxruntime_int8" in settings.runtimes and hasattr(datamodule, "train_set"):
        available = len(calibration_source(datamodule))
        if settings.calibration_images > available:
            raise UserInputError(
                f"profile.calibration_images={settings.calibration_images} is more than the "
                f"{available} training images: use at most {available}"
            )


def check_precision(cfg: DictConfig) -> None:
    """bf16 on a CPU without bf16 units (AVX512-BF16 or AMX) is emulated, 10-30x slower than fp32: refused unless
    `force_precision=true`."""
    precision = str(cfg.trainer.get("precision", ""))
    on_cpu = cfg.trainer.get("accelerator") == "cpu" or not torch.cuda.is_available()
    if precision.startswith("bf16") and on_cpu and not cfg.get("force_precision", False):
        from lnrepro.profiling.runtimes import cpu_features

        cpu = cpu_features()
        if not cpu.get("bf16"):
            raise UserInputError(
                f"trainer.precision={precision} on this CPU ({cpu.get('model')}) has no bf16 units "
                f"and runs 10-30x slower than fp32: use trainer.precision=32-true, or "
                f"force_precision=true to run it anyway"
            )


def data_batches(datamodule: pl.LightningDataModule, loader, device: torch.device) -> Iterator[tuple]:
    """(images, labels) of `loader` exactly as the network sees them in evaluation: moved to `device` and through
    the data module's on-device step (normalisation, no augmentation outside training)."""
    for batch in loader:
        yield datamodule.on_after_batch_transfer(datamodule.transfer_batch_to_device(batch, device, 0), 0)


def calibration_images(datamodule: pl.LightningDataModule, count: int, device: torch.device) -> torch.Tensor:
    """`count` training images drawn at random (seeded) as the network sees them in evaluation: int8's
    calibration set. Data modules whose training set is augmented on the CPU offer `calibration_set`, the same
    images with the evaluation transform; in-memory ones augment on the device only while training."""
    images = calibration_source(datamodule)
    if count > len(images):
        raise UserInputError(
            f"profile.calibration_images={count} is more than the {len(images)} training images: "
            f"use at most {len(images)}"
        )
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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the best checkpoint, write `metrics.json` into the run directory; return the metrics."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("print_config", True) and distributed.is_rank_zero():  # once per run, not once per DDP process
        print_config_tree(cfg, save_to=output_dir / "config_tree.log")
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    resumed_from = distributed.resume_from_own_checkpoint(cfg)  # a requeued job continues from its last.ckpt

    # Everything that can be wrong with the request fails here, before any data is read.
    settings = ProfileSettings.from_config(cfg.get("profile"))
    if settings.end_of_fit:
        settings.check_runtimes()
    check_precision(cfg)
    module = build_module(cfg)
    checkpoint = (
        load_checkpoint(cfg.ckpt_path, trusted=bool(cfg.get("trust_checkpoint"))) if cfg.get("ckpt_path") else None
    )
    if checkpoint is not None:
        check_matches(checkpoint, module, cfg.ckpt_path)
    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    check_calibration(settings, datamodule)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"), multirun_group=hydra_multirun_name(), checkpoint=checkpoint)
    del checkpoint  # fit reads the file again: no second copy of the weights in memory meanwhile
    callbacks += logger_callbacks(loggers)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    # data.batch_size is the global batch: each process gets its share
    scale = distributed.set_up_processes(trainer, datamodule, in_multirun=hydra_multirun_name() is not None)

    try:
        start = time.perf_counter()
        metrics = fit_and_test(cfg, trainer, module, datamodule)
        metrics[schema.FIT_S] = time.perf_counter() - start
        metrics.update(scale)
        metrics[schema.RESUMED_FROM] = resumed_from
        if trainer.is_global_zero:
            write_metrics(output_dir, metrics)  # the fit's results are safe before anything else is measured
            start = time.perf_counter()
            figures = runtime_figures(
                settings, module.net, int(cfg.data.image_size), datamodule, tested=bool(cfg.get("test", True))
            )
            if figures:
                figures[schema.END_OF_FIT_PROFILE_S] = time.perf_counter() - start
                publish(trainer, figures, save=True)
                metrics.update(figures)
                write_metrics(output_dir, metrics)
    finally:
        close_loggers(loggers)
    return metrics
