from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import torch


class EpochSeeding(pl.Callback):
    """Seeds python, numpy and torch (all devices) from (seed, epoch, rank) at the start of every training epoch.

    Lightning's checkpoints do not hold RNG states, so a run resumed from `last.ckpt` would otherwise shuffle,
    augment and drop out differently from the uninterrupted run. With every epoch's randomness a function of its
    index, resuming at an epoch boundary replays the same epochs and reaches the same metrics.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed

    def epoch_seed(self, epoch: int, rank: int) -> int:
        return (self.seed * 1_000_003 + epoch * 1_009 + rank) % 2**32

    def seed_epoch(self, trainer: pl.Trainer) -> None:
        seed = self.epoch_seed(trainer.current_epoch, trainer.global_rank)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # also seeds every CUDA device

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run resumed from a checkpoint written at the end of an epoch skips that resumed epoch's
        # `on_train_epoch_start`; `on_train_start` always runs.
        self.seed_epoch(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seed_epoch(trainer)
