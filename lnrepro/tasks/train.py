"""The training task: the one place that wires data, network, module, callbacks, loggers and trainer."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from lnrepro import schema
from lnrepro.errors import UserInputError
from lnrepro.loggers import publish
from lnrepro.profiling import ProfileSettings, cpu
from lnrepro.schema import write_metrics
from lnrepro.tasks.common import hydra_multirun_name, log, run_facts
from lnrepro.tasks.deployment import check_calibration, runtime_figures, upload_export
from lnrepro.tasks.instantiate import (
    callbacks_for_trainer,
    close_loggers,
    instantiate,
    instantiate_callbacks,
    instantiate_loggers,
    logger_callbacks,
)
from lnrepro.training import ClassificationModule, distributed, signals
from lnrepro.training.resume import resume_checkpoint
from lnrepro.utils.checkpoint import check_matches, load_checkpoint
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


def fit_and_test(
    cfg: DictConfig, trainer: pl.Trainer, module: ClassificationModule, datamodule: pl.LightningDataModule
) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    last = Path(cfg.paths.output_dir) / distributed.LAST_CHECKPOINT
    if cfg.get("train", True):
        log.info("training %s", cfg.model.name)
        trainer.fit(
            module,
            datamodule=datamodule,
            ckpt_path=cfg.get("ckpt_path"),
            weights_only=not cfg.get("trust_checkpoint", False),
        )
        signals.raise_if_received(trainer, last, "at the end of training")
        metrics.update(trainer.callback_metrics)
    if last.is_file():  # a signal from here on loses no training
        signals.set_phase("testing", f"training is complete; resume: {signals.resume_command(last)}")
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


def check_precision(cfg: DictConfig) -> None:
    """bf16 on a CPU without bf16 units (AVX512-BF16 or AMX) is emulated, 10-30x slower than fp32: refused unless
    `force_precision=true`."""
    precision = str(cfg.trainer.get("precision", ""))
    on_cpu = cfg.trainer.get("accelerator") == "cpu" or not torch.cuda.is_available()
    if precision.startswith("bf16") and on_cpu and not cfg.get("force_precision", False):
        features = cpu.cpu_features()
        if not features.get("bf16"):
            raise UserInputError(
                f"trainer.precision={precision} on this CPU ({features.get('model')}) has no bf16 units "
                f"and runs 10-30x slower than fp32: use trainer.precision=32-true, or "
                f"force_precision=true to run it anyway"
            )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the best checkpoint, write `metrics.json` into the run directory; return the metrics."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("print_config", True) and distributed.is_rank_zero():  # once per run, not once per DDP process
        print_config_tree(cfg, save_to=output_dir / "config_tree.log")
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    # Everything that can be wrong with the request fails here, before any data is read.
    settings = ProfileSettings.from_config(cfg.get("profile"))
    if settings.end_of_fit:
        settings.check_runtimes()
        settings.check_predictors()
    check_precision(cfg)
    module = build_module(cfg)
    # the furthest checkpoint that loads: a requeued job's own last.ckpt, the user's ckpt_path, its epoch_*.ckpt
    checkpoint, resumed_from = resume_checkpoint(cfg, module)
    if checkpoint is None and cfg.get("ckpt_path"):  # test-only (train=false): the given checkpoint must fit
        checkpoint = load_checkpoint(cfg.ckpt_path, trusted=bool(cfg.get("trust_checkpoint")))
        check_matches(checkpoint, module, cfg.ckpt_path)
    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    check_calibration(settings, datamodule)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"), multirun_group=hydra_multirun_name(), checkpoint=checkpoint)
    del checkpoint  # fit reads the file again: no second copy of the weights in memory meanwhile
    callbacks = callbacks_for_trainer(callbacks + logger_callbacks(loggers), cfg.trainer, loggers)
    if cfg.trainer.get("enable_checkpointing") is not False:  # else a signal stops at once, with nothing to save
        callbacks.append(signals.StopOnSignal(output_dir / distributed.LAST_CHECKPOINT))
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
            signals.set_phase("the end-of-fit profile")
            figures = runtime_figures(
                settings,
                module.net,
                int(cfg.data.image_size),
                datamodule,
                tested=bool(cfg.get("test", True)),
                run_dir=output_dir,
                about=metrics,
            )
            if figures:
                figures[schema.END_OF_FIT_PROFILE_S] = time.perf_counter() - start
                publish(trainer, figures, save=True)
                metrics.update(figures)
                write_metrics(output_dir, metrics)
            upload_export(trainer, settings, output_dir)
    finally:
        close_loggers(loggers)
    return metrics
