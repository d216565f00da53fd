"""ImageNet-style class folders: root/train/<class>/*, root/val/<class>/*.

Transforms come from timm's `create_transform`: RandomResizedCrop + flip (+ ColorJitter, AutoAugment/RandAugment,
RandomErasing) for training; resize + centre crop for evaluation. A validation split for model selection is held
out of train/ (seeded); val/ is the test split.

Every image is opened once in `setup` (header only), so that a damaged file ends the run there with its name,
or with data.skip_unreadable=true is left out, instead of failing as a PIL traceback in a DataLoader worker.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import Subset

from lnrepro.data.loading import SplitDataModule
from lnrepro.errors import UserInputError

log = logging.getLogger(__name__)

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


CHECK_THREADS = 8  # the check waits on the disk more than on Python: threads overlap the reads
CHECK_CHUNK = 1024  # paths per task: one future per file would cost more memory than ImageNet's path list


class UnreadableImageError(UserInputError):
    """An image that fails to decode in a DataLoader worker, still one line when it reaches the task layer.

    The DataLoader re-raises a worker's exception as `type(message)` with the worker's whole traceback in the
    message; the original message is its last line, after this class's name.
    """

    def __init__(self, message: str):
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def _one_line(error: Exception) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def load_rgb(path: str):
    """torchvision's PIL loader, failing with the file's name: a file whose header is fine but whose data is cut
    short passes the check in `setup` and fails only here."""
    from PIL import Image

    try:
        with open(path, "rb") as file:
            return Image.open(file).convert("RGB")
    except Exception as error:  # truncated data, a bad Huffman table, a decompression bomb: all "cannot use it"
        raise UnreadableImageError(f"{path} could not be decoded ({_one_line(error)}); delete or replace it") from error


def image_problem(path: str) -> str | None:
    """Why PIL cannot read `path`, or None when it can.

    Only the header is parsed (and PNG chunk checksums checked by `verify`): decoding every image of ImageNet
    would take hours, reading its headers takes minutes.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # not an image, permission denied, a broken header: all mean "cannot train on it"
        return _one_line(error)
    return None


def find_unreadable(paths: list[str]) -> dict[str, str]:
    """{path: problem} for each file of `paths` that PIL cannot read, in the order of `paths`."""

    def check(chunk: list[str]) -> list[tuple[str, str | None]]:
        return [(path, image_problem(path)) for path in chunk]

    chunks = [paths[i : i + CHECK_CHUNK] for i in range(0, len(paths), CHECK_CHUNK)]
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        return {path: problem for checked in pool.map(check, chunks) for path, problem in checked if problem}


def _leave_out(view, paths: dict[str, str]) -> None:
    """Drop `paths` from an ImageFolder's sample list (and the lists torchvision derives from it)."""
    view.samples = [sample for sample in view.samples if sample[0] not in paths]
    view.imgs = view.samples
    view.targets = [target for _, target in view.samples]


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
        skip_unreadable: bool = False,
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
        self.skip_unreadable = skip_unreadable
        self.expected_classes = num_classes
        if auto_augment is not None:
            auto_augment = AUTO_AUGMENT_ALIASES.get(str(auto_augment).lower(), auto_augment)
        if eval_crop > eval_resize:
            raise UserInputError(f"data.eval_crop ({eval_crop}) cannot exceed data.eval_resize ({eval_resize})")
        from timm.data import create_transform

        # Built here, so that an unknown augmentation policy fails before any data is read.
        self.train_transform = _train_transform(
            dict(
                input_size=train_crop,
                is_training=True,
                hflip=hflip,
                color_jitter=color_jitter,
                auto_augment=auto_augment,
                interpolation=interpolation,
                re_prob=random_erasing,
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
            )
        )
        self.eval_transform = create_transform(
            input_size=eval_crop,
            is_training=False,
            crop_pct=eval_crop / eval_resize,
            interpolation=interpolation,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )

    def _folder(self, split: str) -> Path:
        folder = self.root / split
        if not folder.is_dir():
            raise UserInputError(
                f"{folder} does not exist. data.root must hold train/ and val/ folders with one sub-folder per class "
                f"(ImageNet's usual layout); set data.root to that folder."
            )
        return folder

    def _leave_out_unreadable(self, train_view, eval_view, test_view) -> None:
        """Check every image once; name the first unreadable one, or leave them all out (data.skip_unreadable)."""
        paths = [path for path, _ in train_view.samples + test_view.samples]
        log.info("Checking that the %d images under %s can be opened", len(paths), self.root)
        unreadable = find_unreadable(paths)
        if not unreadable:
            return
        first, problem = next(iter(unreadable.items()))
        if not self.skip_unreadable:
            more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
            raise UserInputError(
                f"{first} is not a readable image ({problem}){more}; delete or replace it, "
                f"or set data.skip_unreadable=true to leave unreadable images out"
            )
        log.warning(
            "data.skip_unreadable=true: left out %d unreadable image(s) under %s (the first: %s)",
            len(unreadable),
            self.root,
            first,
        )
        for view in (train_view, eval_view, test_view):  # eval_view lists the same files as train_view
            _leave_out(view, unreadable)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from torchvision.datasets import ImageFolder

        train_folder, test_folder = self._folder("train"), self._folder("val")
        train_view = ImageFolder(str(train_folder), transform=self.train_transform, loader=load_rgb)
        eval_view = ImageFolder(str(train_folder), transform=self.eval_transform, loader=load_rgb)
        test_view = ImageFolder(str(test_folder), transform=self.eval_transform, loader=load_rgb)
        if self.expected_classes != len(train_view.classes):
            raise UserInputError(
                f"{train_folder} has {len(train_view.classes)} class folders but data.num_classes="
                f"{self.expected_classes}; set data.num_classes={len(train_view.classes)}"
            )
        if train_view.classes != test_view.classes:
            raise UserInputError(f"train/ and val/ in {self.root} have different class folders")
        self._leave_out_unreadable(train_view, eval_view, test_view)
        count = len(train_view)
        if not 0 < self.val_size < count:
            raise UserInputError(f"data.val_size must be between 1 and {count - 1} (got {self.val_size})")
        permutation = torch.randperm(count, generator=torch.Generator().manual_seed(self.split_seed))
        train_index = permutation[self.val_size :].sort().values
        if self.subset is not None:
            train_index = train_index[: self.subset]
        self.train_set = Subset(train_view, train_index.tolist())
        # the training images with the evaluation transform: what int8 calibrates on (no augmentation)
        self.calibration_set = Subset(eval_view, train_index.tolist())
        self.val_set = Subset(eval_view, permutation[: self.val_size].sort().values.tolist())
        self.test_set = test_view
