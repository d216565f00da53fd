"""Build Lightning callbacks and loggers from their config groups (dicts of `_target_` configs)."""

from __future__ import annotations

import logging

import hydra
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


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
        callbacks.append(hydra.utils.instantiate(config))
    return callbacks


def instantiate_loggers(group: DictConfig | None, multirun_group: str | None = None) -> list[Logger]:
    """`multirun_group` (the sweep directory's name) becomes the W&B group when the config leaves it empty,
    so one multirun = one W&B group."""
    loggers = []
    for name, config in _configs(group, "logger"):
        if config._target_.endswith("WandbLogger") and multirun_group and not config.get("group"):
            with open_dict(config):
                config.group = multirun_group
        loggers.append(hydra.utils.instantiate(config))
    return loggers
