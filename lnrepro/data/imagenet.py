"""ImageNet-style class folders: root/train/<class>/*, root/val/<class>/*.

Transforms come from timm's `create_transform`: RandomResizedCrop + flip (+ ColorJitter, AutoAugment/RandAugment,
RandomErasing) for training; resize + centre crop for evaluation. A validation split for model selection is held
out of train/ (seeded); val/ is the test split.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Subset

from lnrepro.data.loading import SplitDataModule
from lnrepro.errors import UserInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Friendly names for timm's policy strings ("autoaugment" is what conf/data/imagenet.yaml advertises; timm calls the
# AutoAugment paper's ImageNet policy "original" and fails with a bare AssertionError on names it does not know).
AUTO_AUGMENT_ALIASES = {"autoaugment": "original", "randaugment": "rand-m9-mstd0.5"}


def _train_transform(args: dict):
    from timm.data import create_transform

    try:
        return create_transform(**args)
    except (AssertionError, ValueError, KeyError) as error:  # timm asserts on unknown policy names
        raise UserInputError(
            f"data.auto_augment={args['auto_augment']!r} is not a policy timm knows ({type(error).__name__}: "
            f"{error}). Use null, 'autoaugment', 'randaugment' or a timm policy string such as 'rand-m9-mstd0.5', "
            f"'original-mstd0.5', 'v0' or 'augmix-m5-w4-d2'."
        ) from error


class ImageFolderDataModule(SplitDataModule):
    drop_last_train = True  # full batches only: BN statistics of a tiny last batch are noise

    def __init__(
        self,
        root: str = "data/imagenet",
        batch_size: int = 256,
        num_workers: int = 8,
        subset: int | None = None,
        val_size: int = 10000,
        split_seed: int = 0,
        shuffle_seed: int = 0,
        train_crop: int = 224,
        eval_resize: int = 256,
        eval_crop: int = 224,
        interpolation: str = "bilinear",
        hflip: float = 0.5,
        color_jitter: float = 0.0,
        auto_augment: str | None = None,
        random_erasing: float = 0.0,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        num_classes: int = 1000,
        image_size: int = 224,  # read by configs; the crops above decide the real sizes
        stem: str | None = None,  # read by the model config, not here
        name: str = "imagenet",  # read by reports
    ):
        super().__init__(batch_size, num_workers, pin_memory, shuffle_seed, persistent_workers)
        self.root = Path(root).expanduser()
        self.subset = subset
        self.val_size = val_size
        self.split_seed = split_seed
        self.expected_classes = num_classes
        if auto_augment is not None:
            auto_augment = AUTO_AUGMENT_ALIASES.get(str(auto_augment).lower(), auto_augment)
        if eval_crop > eval_resize:
            raise UserInputError(f"data.eval_crop ({eval_crop}) cannot exceed data.eval_resize ({eval_resize})")
        from timm.data import create_transform

        # Built here, so that an unknown augmentation policy fails before any data is read.
        self.train_transform = _train_transform(dict(
            input_size=train_crop, is_training=True, hflip=hflip, color_jitter=color_jitter,
            auto_augment=auto_augment, interpolation=interpolation, re_prob=random_erasing,
            mean=IMAGENET_MEAN, std=IMAGENET_STD,
        ))
        self.eval_transform = create_transform(
            input_size=eval_crop, is_training=False, crop_pct=eval_crop / eval_resize, interpolation=interpolation,
            mean=IMAGENET_MEAN, std=IMAGENET_STD,
        )

    def _folder(self, split: str) -> Path:
        folder = self.root / split
        if not folder.is_dir():
            raise UserInputError(
                f"{folder} does not exist. data.root must hold train/ and val/ folders with one sub-folder per class "
                f"(ImageNet's usual layout); set data.root to that folder."
            )
        return folder

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from torchvision.datasets import ImageFolder

        train_folder, test_folder = self._folder("train"), self._folder("val")
        train_view = ImageFolder(str(train_folder), transform=self.train_transform)
        eval_view = ImageFolder(str(train_folder), transform=self.eval_transform)
        test_view = ImageFolder(str(test_folder), transform=self.eval_transform)
        if self.expected_classes != len(train_view.classes):
            raise UserInputError(
                f"{train_folder} has {len(train_view.classes)} class folders but data.num_classes="
                f"{self.expected_classes}; set data.num_classes={len(train_view.classes)}"
            )
        if train_view.classes != test_view.classes:
            raise UserInputError(f"train/ and val/ in {self.root} have different class folders")
        count = len(train_view)
        if not 0 < self.val_size < count:
            raise UserInputError(f"data.val_size must be between 1 and {count - 1} (got {self.val_size})")
        permutation = torch.randperm(count, generator=torch.Generator().manual_seed(self.split_seed))
        train_index = permutation[self.val_size:].sort().values
        if self.subset is not None:
            train_index = train_index[: self.subset]
        self.train_set = Subset(train_view, train_index.tolist())
        self.val_set = Subset(eval_view, permutation[: self.val_size].sort().values.tolist())
        self.test_set = test_view
