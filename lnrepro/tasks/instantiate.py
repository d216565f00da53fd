"""Build Lightning callbacks and loggers from their config groups (dicts of `_target_` configs), for the tasks."""

from __future__ import annotations

import logging

import hydra
from hydra.errors import InstantiationException
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import Checkpoint, LearningRateMonitor, ProgressBar
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, open_dict

from lnrepro.callbacks.wandb_run_id import WandbRunId
from lnrepro.errors import USER_FACING_ERRORS
from lnrepro.loggers import WandbLogger as LnreproWandbLogger

log = logging.getLogger(__name__)


def instantiate(config, **kwargs):
    """`hydra.utils.instantiate`, but a user-facing error raised by the target comes out as itself rather than
    wrapped in Hydra's InstantiationException, so it still prints as one line."""
    try:
        return hydra.utils.instantiate(config, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        while cause is not None and not isinstance(cause, USER_FACING_ERRORS):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def _configs(group: DictConfig | None, kind: str):
    if not group:
        return
    if not isinstance(group, DictConfig):
        raise TypeError(f"the {kind} config must be a mapping of name -> config")
    for name, config in group.items():
        if isinstance(config, DictConfig) and "_target_" in config:
            yield name, config


def instantiate_callbacks(group: DictConfig | None) -> list[Callback]:
    callbacks = []
    for name, config in _configs(group, "callbacks"):
        log.debug("callback %s: %s", name, config._target_)
        callbacks.append(instantiate(config))
    return callbacks


def switched_off(callback: Callback, trainer: DictConfig, loggers: list[Logger]) -> str | None:
    """The setting that switches `callback` off, or None. Lightning refuses a trainer whose flag disables what a
    callback does (`enable_progress_bar=False` beside a progress bar, `enable_checkpointing=False` beside a checkpoint
    callback) and a LearningRateMonitor without a logger, with a MisconfigurationException; the default callbacks
    hold all three, so the task leaves such a callback out and the setting does what it reads."""
    if isinstance(callback, ProgressBar) and trainer.get("enable_progress_bar") is False:
        return "trainer.enable_progress_bar=false"
    if isinstance(callback, Checkpoint) and trainer.get("enable_checkpointing") is False:
        return "trainer.enable_checkpointing=false"
    if isinstance(callback, LearningRateMonitor) and not loggers:
        return "no logger"
    return None


def callbacks_for_trainer(callbacks: list[Callback], trainer: DictConfig, loggers: list[Logger]) -> list[Callback]:
    """`callbacks` without those that the trainer config or the absence of loggers switches off (`switched_off`)."""
    kept = []
    for callback in callbacks:
        reason = switched_off(callback, trainer, loggers)
        if reason is None:
            kept.append(callback)
        else:
            log.info("%s: leaving out the %s callback", reason, type(callback).__name__)
    return kept


def instantiate_loggers(
    group: DictConfig | None, multirun_group: str | None = None, checkpoint: dict | None = None
) -> list[Logger]:
    """`multirun_group` (the sweep directory's name) becomes the W&B group when the config leaves it empty,
    so one multirun = one W&B group. `checkpoint` (the one `ckpt_path=` resumes from, already loaded) names the
    W&B run to continue, unless the config names one (`id`/`version`)."""
    run_id = WandbRunId.run_id_in(checkpoint)
    loggers = []
    for _name, config in _configs(group, "logger"):
        if config._target_.endswith("WandbLogger") and multirun_group and not config.get("group"):
            with open_dict(config):
                config.group = multirun_group
        logger = instantiate(config)
        if isinstance(logger, LnreproWandbLogger) and run_id and not (config.get("id") or config.get("version")):
            logger.resume(run_id)
            log.info("W&B: continuing run %s from the checkpoint", run_id)
        loggers.append(logger)
    return loggers


def logger_callbacks(loggers: list[Logger]) -> list[Callback]:
    """Callbacks the loggers need: a W&B logger's run id goes into the checkpoints, for a resumed run."""
    return [WandbRunId(logger) for logger in loggers if isinstance(logger, WandbLogger)]


def close_loggers(loggers: list[Logger]) -> None:
    """Finish W&B runs: a multirun is one process, and an unfinished run would swallow the next job's logs
    (and an offline run's file is complete only once finished)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()
