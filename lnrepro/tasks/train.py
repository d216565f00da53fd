"""The training task: the one place that wires data, network, module, callbacks, loggers and trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from lnrepro import schema
from lnrepro.schema import write_metrics
from lnrepro.tasks.common import hydra_multirun_name, log
from lnrepro.training import ClassificationModule
from lnrepro.utils.checkpoint import check_matches, load_checkpoint
from lnrepro.utils.instantiate import close_loggers, instantiate, instantiate_callbacks, instantiate_loggers
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


def fit_and_test(cfg: DictConfig, trainer: pl.Trainer, module: ClassificationModule,
                 datamodule: pl.LightningDataModule) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    if cfg.get("train", True):
        log.info("training %s", cfg.model.name)
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=False)
        metrics.update(trainer.callback_metrics)
    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning("no best checkpoint was saved: testing the current weights")
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=False)
        metrics.update(trainer.callback_metrics)
        metrics[schema.TEST_CKPT_PATH] = best or None

    # Callbacks that measure the run (EfficiencyProfile) leave their final figures in a `metrics` dict.
    for callback in trainer.callbacks:
        if isinstance(getattr(callback, "metrics", None), dict):
            metrics.update(callback.metrics)
    metrics.update(run_facts(cfg))
    metrics.update({schema.TASK: "train", schema.EPOCHS: trainer.current_epoch,
                    schema.GLOBAL_STEP: trainer.global_step})
    return metrics


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the best checkpoint, write `metrics.json` into the run directory; return the metrics."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("print_config", True):
        print_config_tree(cfg, save_to=output_dir / "config_tree.log")
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    # Everything that can be wrong with the request fails here, before any data is read.
    module = build_module(cfg)
    if cfg.get("ckpt_path"):
        check_matches(load_checkpoint(cfg.ckpt_path), module, cfg.ckpt_path)
    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"), multirun_group=hydra_multirun_name())
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    try:
        metrics = fit_and_test(cfg, trainer, module, datamodule)
    finally:
        close_loggers(loggers)
    if trainer.is_global_zero:
        write_metrics(output_dir, metrics)
    return metrics
