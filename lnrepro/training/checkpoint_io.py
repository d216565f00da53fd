"""How checkpoints are written and tracked: atomically, and with a resumed run still knowing its best one."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lnrepro.utils.files import atomic_writer

log = logging.getLogger("lnrepro")


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves go through `lnrepro.utils.files.atomic_writer`.

    Lightning's own save serialises the whole checkpoint into memory and then writes it through an fsspec
    transaction, whose temporary file may live on another filesystem (then the final move is a copy, not an atomic
    rename). Here torch.save streams into a temporary file next to the target, which is fsynced and renamed over
    it. Every checkpoint goes through this: ModelCheckpoint's top-k files, the `last.ckpt` callback (the same kind
    of save under a fixed name) and `trainer.save_checkpoint`. A failed write raises an OSError naming the
    checkpoint (`lnrepro.tasks.common` turns a full disk into one line). Remote paths (s3://...) keep Lightning's
    save.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # refuses storage_options, as before
            return
        with atomic_writer(path) as file:
            torch.save(checkpoint, file)


# The paths ModelCheckpoint stores and reads back on resume; the best one is what `test` loads.
STORED_PATHS = ("best_model_path", "kth_best_model_path", "last_model_path", "dirpath")


def checked_paths(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A resumed ModelCheckpoint's stored paths, each a string naming a .ckpt file (dirpath: any string), or
    dropped with one warning: a checkpoint is data, and the best path becomes the file `test` loads. Dropped, the
    resumed run forgets its best so far, as Lightning does when the file is gone."""
    checked = dict(state_dict)
    for key in STORED_PATHS:
        value = checked.get(key)
        if value is None or value == "":
            continue
        fine = isinstance(value, str) and len(value) < 4096 and "\x00" not in value
        if fine and key != "dirpath":
            fine = value.endswith(".ckpt")
        if not fine:
            log.warning("the checkpoint's ModelCheckpoint %s %.80r is not a checkpoint path: ignored", key, value)
            checked.pop(key)
            if key == "best_model_path":
                checked.pop("best_model_score", None)
    best_k = checked.get("best_k_models")
    if best_k is not None and not (
        isinstance(best_k, dict) and all(isinstance(path, str) and path.endswith(".ckpt") for path in best_k)
    ):
        log.warning("the checkpoint's ModelCheckpoint best_k_models is not a map of checkpoint paths: ignored")
        checked.pop("best_k_models")
    return checked


class ResumableModelCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that keeps its record of the best checkpoints when a run resumes into a new directory.

    Every `train.py ckpt_path=...` gets a new run directory, and Lightning then forgets the best score so far: the
    resumed run's first validation became "best" however it scored, and the test ran on other weights than the
    uninterrupted run's. Nothing in the old directory is deleted for it: Lightning removes replaced checkpoints
    only inside this callback's own directory. When the best checkpoint is gone (the old directory was moved or
    deleted), Lightning's forgetting applies: the resumed run's next validation names a new best.
    """

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key: checkpoints written before (or by a plain ModelCheckpoint) keep restoring.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = checked_paths(state_dict)
        best = state_dict.get("best_model_path")
        if best and _is_local_file_protocol(best) and not os.path.isfile(best):
            super().load_state_dict(state_dict)
            return
        super().load_state_dict({**state_dict, "dirpath": self.dirpath})


def on_last_batch_of_epoch(trainer) -> bool:
    """Whether the training step that just ended was its epoch's last.

    Lightning resumes from a checkpoint written at the end of an epoch's last step without running that epoch's
    validation (its training loop reads the restart as `RESTARTED_ON_TRAIN_BATCH_END` and fast-forwards the
    validation loop): the resumed run would miss one validation, and with it possibly its best checkpoint. So a
    mid-epoch checkpoint is never written there; the epoch's end, after validation, writes it instead.
    """
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


class LastCheckpoint(ModelCheckpoint):
    """The `last.ckpt` callback: every epoch's end, and with `every_n_train_steps=N` also every N steps inside an
    epoch (Lightning's ModelCheckpoint takes one or the other) but never at an epoch's last step
    (`on_last_batch_of_epoch`), so a kill at any moment resumes to the uninterrupted run's numbers."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not on_last_batch_of_epoch(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._every_n_train_steps >= 1 and not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
