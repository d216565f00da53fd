"""Which checkpoint a training run continues from: the furthest one that loads.

A job restarted in its own run directory (a SLURM requeue, a second start with the same `hydra.run.dir`) finds its
checkpoints there; a user may also pass `ckpt_path=`. The candidates, tried in this order:

1. the run's own `checkpoints/last.ckpt` (further along the same run than anything the user named at the start);
2. the user's `ckpt_path=`;
3. the run's own `checkpoints/epoch_*.ckpt`, the highest `global_step` (read from each file, not its time) first.

The first that reads and fits the configured network wins; each one skipped is named in one warning with the reason.
A run's own file that does not load is renamed aside to `<name>.damaged` (kept, never deleted), so a requeued job
does not meet it again; the user's file is left where it is. When candidates exist and none loads, one line names
them all (`UserInputError`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict
from torch import nn

from lnrepro.errors import UserInputError
from lnrepro.training.distributed import LAST_CHECKPOINT, is_rank_zero, keep_csv_history
from lnrepro.utils.checkpoint import check_matches, load_checkpoint, training_position

log = logging.getLogger("lnrepro")

DAMAGED_SUFFIX = ".damaged"


def _own_epoch_checkpoints(checkpoints: Path) -> list[Path]:
    """The run's epoch_*.ckpt, furthest first by the global step each file holds (unreadable ones last)."""
    found = [(training_position(path), path) for path in checkpoints.glob("epoch_*.ckpt")]
    return [path for position, path in sorted(found, key=lambda item: -1 if item[0] is None else -item[0][1])]


def candidates(cfg: DictConfig) -> list[tuple[Path, bool]]:
    """(path, the run's own) in the order they are tried."""
    checkpoints = Path(cfg.paths.output_dir) / LAST_CHECKPOINT.parent
    found: list[tuple[Path, bool]] = []
    if (checkpoints / LAST_CHECKPOINT.name).is_file():
        found.append((checkpoints / LAST_CHECKPOINT.name, True))
    if cfg.get("ckpt_path"):
        found.append((Path(str(cfg.ckpt_path)).expanduser(), False))
    found += [(path, True) for path in _own_epoch_checkpoints(checkpoints)]
    unique, seen = [], set()
    for path, own in found:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append((path, own))
    return unique


def _set_aside(path: Path) -> Path | None:
    """`path` renamed to `<name>.damaged` (or `.damaged.<n>` beside earlier ones); by the first process only."""
    if not is_rank_zero():
        return None
    target, number = path.with_name(path.name + DAMAGED_SUFFIX), 1
    while target.exists():
        target, number = path.with_name(f"{path.name}{DAMAGED_SUFFIX}.{number}"), number + 1
    try:
        os.replace(path, target)
    except OSError:  # another process of the run set it aside first, or the directory is read-only
        return None
    return target


def resume_checkpoint(cfg: DictConfig, module: nn.Module) -> tuple[dict[str, Any] | None, str | None]:
    """The checkpoint (already read) the run continues from and its path, or (None, None) for a fresh start;
    `cfg.ckpt_path` is set to that path for `trainer.fit`."""
    if not cfg.get("train", True):  # testing only: the user's ckpt_path is what is tested, as given
        return None, cfg.get("ckpt_path")
    tried = candidates(cfg)
    skipped: list[str] = []
    for path, own in tried:
        try:
            checkpoint = load_checkpoint(path, trusted=bool(cfg.get("trust_checkpoint")))
            check_matches(checkpoint, module, path)
        except UserInputError as error:
            if len(tried) == 1 and not own:  # the user's file alone: its own line says what is wrong and the fix
                raise
            aside = _set_aside(path) if own and path.exists() else None
            kept = f" (kept as {aside})" if aside else ""
            log.warning("not resuming from %s%s: %s", path, kept, error)
            skipped.append(f"{path}{kept}")
            continue
        _announce(cfg, path, own, checkpoint)
        with open_dict(cfg):
            cfg.ckpt_path = str(path)
        return checkpoint, str(path)
    if tried:
        raise UserInputError(
            f"no checkpoint to resume from loads: {'; '.join(skipped)} (the warnings above say why); pass a good "
            f"one with ckpt_path=, or start afresh in a new run directory without ckpt_path="
        )
    return None, None


def _announce(cfg: DictConfig, path: Path, own: bool, checkpoint: dict[str, Any]) -> None:
    epoch, step = checkpoint.get("epoch"), checkpoint.get("global_step")
    at = f" (epoch {epoch}, step {step})" if isinstance(epoch, int) and isinstance(step, int) else ""
    if not own:
        return  # the user's own choice: Lightning says it restores from it
    restarts = os.environ.get("SLURM_RESTART_COUNT")
    why = f"SLURM restart {restarts}" if restarts else "a requeued or restarted job"
    given = cfg.get("ckpt_path")
    log.info(
        "resuming from %s%s: the run directory already holds a checkpoint (%s)%s",
        path,
        at,
        why,
        f"; ckpt_path={given} was where the run began" if given and Path(str(given)) != path else "",
    )
    if is_rank_zero():
        keep_csv_history(Path(cfg.paths.output_dir))
