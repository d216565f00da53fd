"""What every task shares: one-line errors and Hydra run facts (metrics.json: `lnrepro.schema`)."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

from omegaconf import DictConfig

from lnrepro.errors import USER_FACING_ERRORS
from lnrepro.schema import multirun_group

log = logging.getLogger("lnrepro")


def hydra_config():
    """The running Hydra app's config, or None outside one."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except ValueError:  # not inside a Hydra app (e.g. a test calling the task directly)
        return None


def hydra_multirun_name() -> str | None:
    """`<task>/<sweep dir>` inside a Hydra multirun (its W&B group), else None."""
    from hydra.types import RunMode

    hydra_cfg = hydra_config()
    if hydra_cfg is None or hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return multirun_group(hydra_cfg.sweep.dir)


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run `task`; a user-facing error becomes one log line and exit status 2.

    In a multirun the error is re-raised instead: Hydra then records the job as failed and goes on with the
    others (the sweep ends non-zero after the last job).
    """
    try:
        return task(cfg)
    except USER_FACING_ERRORS as error:
        log.error("%s", error)
        if hydra_multirun_name() is not None:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
