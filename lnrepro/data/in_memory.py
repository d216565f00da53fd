"""Datasets held in memory as uint8 tensors, served a whole batch per fetch, augmented on the device."""

from __future__ import annotations

from typing import Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lnrepro.data import batch_augment
from lnrepro.errors import UserInputError


class TensorImageDataset(Dataset):
    """uint8 images (N, C, H, W) and int64 labels (N,).

    `__getitems__` lets the DataLoader fetch a batch with one tensor index instead of N `__getitem__` calls and a
    collate, while any sampler (shuffling, Lightning's DistributedSampler) still works.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]


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


def _batch_is_ready(batch):
    # `__getitems__` already returned stacked tensors.
    return batch


def check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise UserInputError(f"data.batch_size must be a positive integer (got {batch_size!r})")
    return batch_size


class InMemoryImageDataModule(pl.LightningDataModule):
    """Base for datasets that fit in memory. Subclasses fill `train_set`, `val_set` and `test_set` in `setup`.

    Batches travel to the device as uint8 (4x less to copy than float); there they are augmented (training only)
    and normalised in `on_after_batch_transfer`.
    """

    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __init__(
        self,
        batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        crop_padding: int = 0,
        flip: bool = False,
        cutout: int = 0,
        shuffle_seed: int = 0,
    ):
        super().__init__()
        self.batch_size = check_batch_size(batch_size)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.crop_padding = crop_padding
        self.flip = flip
        self.cutout = cutout
        self.shuffle_seed = shuffle_seed
        self.train_set: TensorImageDataset | None = None
        self.val_set: TensorImageDataset | None = None
        self.test_set: TensorImageDataset | None = None

    def _loader(self, dataset: TensorImageDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("setup() must run before the dataloaders are asked for")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.shuffle_seed) if shuffle else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            collate_fn=_batch_is_ready,
            persistent_workers=self.num_workers > 0,
            # Its own generator: otherwise creating the iterator draws the worker base seed from the global RNG,
            # at a point that differs between a fresh and a resumed run.
            generator=torch.Generator().manual_seed(self.shuffle_seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def augment_and_normalize(self, images: torch.Tensor, training: bool) -> torch.Tensor:
        if training and (self.crop_padding > 0 or self.flip):
            images = batch_augment.random_crop_flip(images, self.crop_padding, 0.5 if self.flip else 0.0)
        images = batch_augment.normalize(images, self.mean, self.std)
        if training and self.cutout > 0:
            images = batch_augment.cutout(images, self.cutout)
        return images

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.augment_and_normalize(images, training), labels
