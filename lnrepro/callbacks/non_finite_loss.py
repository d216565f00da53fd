from __future__ import annotations

import lightning.pytorch as pl
import torch

from lnrepro.errors import TrainingDivergedError


class StopOnNonFiniteLoss(pl.Callback):
    """Stops training at the first NaN/inf training loss, naming the step and the last good checkpoint.

    Lightning's own guards don't do this: EarlyStopping(check_finite) looks only at validation metrics, and
    `detect_anomaly` slows every step. Checking the scalar loss costs one device sync per step. Nothing is saved
    on the way out, so checkpoints written before the divergence stay as they were.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None or bool(torch.isfinite(loss).all()):
            return
        checkpoint = trainer.checkpoint_callback
        last_good = (checkpoint.last_model_path or checkpoint.best_model_path) if checkpoint is not None else ""
        raise TrainingDivergedError(
            f"the training loss became {loss.item()} at epoch {trainer.current_epoch}, batch {batch_idx} "
            f"(global step {trainer.global_step}); last good checkpoint: {last_good or 'none yet'}. "
            f"Lower optimizer.lr, set trainer.gradient_clip_val, or check the input data."
        )
