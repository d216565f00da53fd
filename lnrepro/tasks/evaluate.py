"""The evaluation task: rebuild a run from its checkpoint and test it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from lnrepro.errors import UserInputError
from lnrepro.tasks.common import hydra_config, log, write_metrics
from lnrepro.tasks.train import build_module, run_facts
from lnrepro.utils.checkpoint import check_matches, load_checkpoint
from lnrepro.utils.instantiate import close_loggers, instantiate, instantiate_loggers
from lnrepro.utils.tables import print_table

# Only these parts of a stored run can be changed on eval's command line; the rest describes the trained weights.
OVERRIDABLE = ("data", "model")


def command_line_keys() -> list[str]:
    hydra_cfg = hydra_config()
    overrides = hydra_cfg.overrides.task if hydra_cfg is not None else []
    return [override.split("=", 1)[0].lstrip("+~") for override in overrides]


def stored_run_config(checkpoint: dict[str, Any], cfg: DictConfig, path: str) -> DictConfig:
    stored = checkpoint.get("hyper_parameters") or {}
    if "model" not in stored or "data" not in stored:
        raise UserInputError(f"checkpoint {path} holds no lnrepro run config: was it written by train.py?")
    run_cfg = OmegaConf.create(stored)
    for key in command_line_keys():
        if key.split(".")[0] in OVERRIDABLE:
            value = OmegaConf.select(cfg, key)
            value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            OmegaConf.update(run_cfg, key, value, merge=False, force_add=True)
    # The weights come from the checkpoint, not from a pretrained file that may be gone.
    OmegaConf.update(run_cfg, "model.pretrained", None, force_add=True)
    return run_cfg


def print_metrics(metrics: dict[str, Any], title: str) -> None:
    print_table(title, [("metric", True), ("value", False)],
                [[key, f"{value:.4f}" if isinstance(value, float) else str(value)]
                 for key, value in sorted(metrics.items())])


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    checkpoint = load_checkpoint(cfg.ckpt_path)
    run_cfg = stored_run_config(checkpoint, cfg, cfg.ckpt_path)
    module = build_module(run_cfg, for_training=False)
    check_matches(checkpoint, module, cfg.ckpt_path)
    del checkpoint
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule: pl.LightningDataModule = instantiate(run_cfg.data)
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, enable_checkpointing=False)
    try:
        trainer.test(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=False)
    finally:
        close_loggers(loggers)
    metrics: dict[str, Any] = {key: float(value) for key, value in trainer.callback_metrics.items()}
    log.info("evaluated %s on the test split", cfg.ckpt_path)
    print_metrics(metrics, title=f"{run_cfg.model.name} (test split)")
    metrics.update(run_facts(run_cfg), ckpt_path=str(cfg.ckpt_path))
    if trainer.is_global_zero:
        write_metrics(Path(cfg.paths.output_dir) / "metrics.json", metrics)
    return metrics
