"""What every data module shares: batch-size checks, a resumable shuffle, and the three DataLoaders."""

from __future__ import annotations

from typing import Any, Callable

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lnrepro.errors import UserInputError


def check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise UserInputError(f"data.batch_size must be a positive integer (got {batch_size!r})")
    return batch_size


class EpochShuffleSampler(Sampler[int]):
    """A shuffle that is a function of (seed, epoch) alone.

    torch's RandomSampler draws from the global RNG when iteration starts; on a resumed run Lightning starts that
    iterator before any epoch-start hook can re-seed, so the resumed epoch would see another order. Lightning calls
    `set_epoch` before each epoch (and wraps this sampler for DDP).
    """

    def __init__(self, length: int, seed: int = 0):
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())


class SplitDataModule(pl.LightningDataModule):
    """A train/val/test split served by DataLoaders that a resumed run replays exactly.

    Subclasses fill `train_set`, `val_set` and `test_set` in `setup`, and may set `collate_fn` and
    `drop_last_train`.
    """

    collate_fn: Callable[[Any], Any] | None = None
    drop_last_train: bool = False

    def __init__(self, batch_size: int, num_workers: int = 0, pin_memory: bool = False, shuffle_seed: int = 0,
                 persistent_workers: bool = True):
        super().__init__()
        self.batch_size = check_batch_size(batch_size)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.shuffle_seed = shuffle_seed
        self.persistent_workers = persistent_workers and num_workers > 0
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("setup() must run before the dataloaders are asked for")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.shuffle_seed) if train else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            collate_fn=self.collate_fn,
            drop_last=train and self.drop_last_train,
            persistent_workers=self.persistent_workers,
            # Its own generator: otherwise creating the iterator draws the worker base seed from the global RNG,
            # at a point that differs between a fresh and a resumed run.
            generator=torch.Generator().manual_seed(self.shuffle_seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
