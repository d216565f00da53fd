from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from lnrepro.errors import TrainingDivergedError


def newest_checkpoint(trainer: pl.Trainer) -> str:
    paths = {
        Path(p)
        for callback in trainer.checkpoint_callbacks
        for p in (callback.best_model_path, callback.last_model_path)
        if p
    }
    existing = [p for p in paths if p.is_file()]
    return str(max(existing, key=lambda p: p.stat().st_mtime)) if existing else ""


class StopOnNonFiniteLoss(pl.Callback):
    """Stops training at the first NaN/inf training loss, naming the step and the last good checkpoint.

    Lightning's own guards don't do this: EarlyStopping(check_finite) looks only at validation metrics, and
    `detect_anomaly` slows every step. Checking the scalar loss costs one device sync per step. Nothing is saved
    on the way out, so checkpoints written before the divergence stay as they were.
    """

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None or bool(torch.isfinite(loss).all()):
            return
        last_good = newest_checkpoint(trainer)
        raise TrainingDivergedError(
            f"the training loss became {loss.item()} at epoch {trainer.current_epoch}, batch {batch_idx} "
            f"(global step {trainer.global_step}); last good checkpoint: {last_good or 'none yet'}. "
            f"Lower optimizer.lr, set trainer.gradient_clip_val, or check the input data."
        )
