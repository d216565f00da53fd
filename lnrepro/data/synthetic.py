"""Random images and labels generated in memory from a seed: no disk, any size and class count."""

from __future__ import annotations

import torch

from lnrepro.data.in_memory import InMemoryImageDataModule, TensorImageDataset
from lnrepro.errors import UserInputError


class SyntheticDataModule(InMemoryImageDataModule):
    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        train_size: int = 512,
        val_size: int = 128,
        test_size: int = 128,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        channels: int = 3,
        shuffle_seed: int = 0,
        crop_padding: int = 0,
        flip: bool = False,
        cutout: int = 0,
        stem: str | None = None,  # read by the model config, not here
        name: str = "synthetic",  # read by reports
    ):
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            crop_padding=crop_padding,
            flip=flip,
            cutout=cutout,
            shuffle_seed=shuffle_seed,
        )
        for name, value in (
            ("num_classes", num_classes),
            ("image_size", image_size),
            ("train_size", train_size),
            ("val_size", val_size),
            ("test_size", test_size),
        ):
            if value <= 0:
                raise UserInputError(f"data.{name} must be positive (got {value})")
        self.num_classes = num_classes
        self.image_size = image_size
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.seed = seed
        self.channels = channels

    def _make(self, split_index: int, count: int) -> TensorImageDataset:
        generator = torch.Generator().manual_seed(self.seed * 1000 + split_index)
        images = torch.randint(
            0, 256, (count, self.channels, self.image_size, self.image_size), dtype=torch.uint8, generator=generator
        )
        labels = torch.randint(0, self.num_classes, (count,), generator=generator)
        return TensorImageDataset(images, labels)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._make(0, self.sizes["train"])
            self.val_set = self._make(1, self.sizes["val"])
            self.test_set = self._make(2, self.sizes["test"])
