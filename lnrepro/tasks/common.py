"""What every task shares: one-line errors, Hydra run facts, metrics.json."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig

from lnrepro.errors import USER_FACING_ERRORS

log = logging.getLogger("lnrepro")


def hydra_config():
    """The running Hydra app's config, or None outside one."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except ValueError:  # not inside a Hydra app (e.g. a test calling the task directly)
        return None


def hydra_multirun_name() -> str | None:
    """`<task>/<sweep dir>` inside a Hydra multirun, else None."""
    from hydra.types import RunMode

    hydra_cfg = hydra_config()
    if hydra_cfg is None or hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(hydra_cfg.sweep.dir)
    return f"{sweep_dir.parent.parent.name}/{sweep_dir.name}"


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


def to_number(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> Path:
    """One flat JSON object; keys sorted so that runs diff cleanly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {key: to_number(value) for key, value in metrics.items()}
    path.write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")
    log.info("metrics written to %s", path)
    return path
