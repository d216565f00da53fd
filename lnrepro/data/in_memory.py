"""Datasets held in memory as uint8 tensors, served a whole batch per fetch, augmented on the device."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from lnrepro.data import batch_augment
from lnrepro.data.loading import SplitDataModule


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


def _batch_is_ready(batch):
    # `__getitems__` already returned stacked tensors.
    return batch


class InMemoryImageDataModule(SplitDataModule):
    """Base for datasets that fit in memory. Subclasses fill `train_set`, `val_set` and `test_set` (as
    `TensorImageDataset`s) in `setup`.

    Batches travel to the device as uint8 (4x less to copy than float); there they are augmented (training only)
    and normalised in `on_after_batch_transfer`.
    """

    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    collate_fn = staticmethod(_batch_is_ready)

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
        super().__init__(batch_size, num_workers, pin_memory, shuffle_seed)
        self.crop_padding = crop_padding
        self.flip = flip
        self.cutout = cutout

    def augment_and_normalize(self, images: torch.Tensor, training: bool) -> torch.Tensor:
        if training and (self.crop_padding > 0 or self.flip):
            images = batch_augment.random_crop_flip(images, self.crop_padding, 0.5 if self.flip else 0.0)
        images = batch_augment.normalize(images, self.mean, self.std)
        if training and self.cutout > 0:
            images = batch_augment.cutout(images, self.cutout)
        return images

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, torch.Tensor):  # the module's example_input_array on its way to the model summary
            return batch
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.augment_and_normalize(images, training), labels
