from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import torch


class EpochSeeding(pl.Callback):
    """Seeds python, numpy and torch (all devices) before every training batch, from (seed, batches trained so
    far, rank).

    Lightning's checkpoints do not hold RNG states, so a run resumed from `last.ckpt` would otherwise shuffle,
    augment and drop out differently from the uninterrupted run. With every batch's randomness a function of its
    position in the run, a run resumed from a checkpoint taken at an epoch's end or in the middle of one (with
    `ResumableDataLoader` continuing the data at the next batch) replays the same batches and reaches the same
    metrics. The seed is set at the end of the previous batch rather than at the start of this one because the
    batch is augmented (`on_after_batch_transfer`) before `on_train_batch_start` runs.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed

    def batch_seed(self, batches: int, rank: int) -> int:
        return (self.seed * 1_000_003 + batches * 1_009 + rank) % 2**32

    def seed_next_batch(self, trainer: pl.Trainer) -> None:
        # Lightning counts the batches fetched over the whole fit and restores the count from the checkpoint.
        seed = self.batch_seed(trainer.fit_loop.total_batch_idx + 1, trainer.global_rank)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # also seeds every CUDA device

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed run skips the resumed epoch's `on_train_epoch_start` (and, mid-epoch, the batches before the
        # checkpoint); `on_train_start` always runs.
        self.seed_next_batch(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Again after validation, which may have drawn random numbers that a resumed run does not draw.
        self.seed_next_batch(trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self.seed_next_batch(trainer)
