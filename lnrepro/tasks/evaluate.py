"""The evaluation task: rebuild a run from its checkpoint (`lnrepro.load_run`) and test it."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from lnrepro import schema
from lnrepro.loggers import publish
from lnrepro.profiling import ProfileSettings
from lnrepro.runs import load_run
from lnrepro.schema import write_metrics
from lnrepro.tasks.common import hydra_config, log, run_facts
from lnrepro.tasks.deployment import runtime_figures
from lnrepro.tasks.instantiate import close_loggers, instantiate, instantiate_loggers
from lnrepro.training import ClassificationModule
from lnrepro.utils.tables import print_table

# Only these parts of a stored run can be changed on eval's command line; the rest describes the trained weights.
OVERRIDABLE = ("data", "model")


def command_line_overrides(cfg: DictConfig) -> dict[str, Any]:
    """{key: value} of the data/model keys given on eval's command line, as composed into `cfg`."""
    hydra_cfg = hydra_config()
    keys = [override.split("=", 1)[0].lstrip("+~") for override in (hydra_cfg.overrides.task if hydra_cfg else [])]
    overrides = {}
    for key in keys:
        if key.split(".")[0] in OVERRIDABLE and "." in key:
            value = OmegaConf.select(cfg, key)
            overrides[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return overrides


def print_metrics(metrics: dict[str, Any], title: str) -> None:
    print_table(
        title,
        [("metric", True), ("value", False)],
        [[key, f"{value:.4f}" if isinstance(value, float) else str(value)] for key, value in sorted(metrics.items())],
    )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    settings = ProfileSettings.from_config(cfg.get("profile"))
    settings.check_runtimes()
    net, run_cfg = load_run(
        cfg.ckpt_path, overrides=command_line_overrides(cfg), trusted=bool(cfg.get("trust_checkpoint"))
    )
    module = ClassificationModule(net=net, optimizer=None, scheduler=None, num_classes=run_cfg.data.num_classes)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule: pl.LightningDataModule = instantiate(run_cfg.data)  # the package's data config, stored values
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, enable_checkpointing=False)
    try:
        trainer.test(module, datamodule=datamodule)
        metrics: dict[str, Any] = {key: float(value) for key, value in trainer.callback_metrics.items()}
        if trainer.is_global_zero:  # the accuracy in each deployment runtime beside eager's
            figures = runtime_figures(settings, net, int(run_cfg.data.image_size), datamodule, tested=True)
            publish(trainer, figures, save=True)
            metrics.update(figures)
    finally:
        close_loggers(loggers)
    log.info("evaluated %s on the test split", cfg.ckpt_path)
    print_metrics(metrics, title=f"{run_cfg.model.name} (test split)")
    metrics.update(run_facts(run_cfg))
    metrics.update({schema.TASK: "eval", schema.CKPT_PATH: str(cfg.ckpt_path)})
    if trainer.is_global_zero:
        write_metrics(cfg.paths.output_dir, metrics)
    return metrics
