"""ImageNet-style class folders: root/train/<class>/*, root/val/<class>/*.

Transforms come from timm's `create_transform`: RandomResizedCrop + flip (+ ColorJitter, AutoAugment/RandAugment,
RandomErasing) for training; resize + centre crop for evaluation. A validation split for model selection is held
out of train/ (seeded); val/ is the test split.

Every image is opened once in `setup` (header only), so that a damaged file ends the run there with its name,
or with data.skip_unreadable=true is left out, instead of failing as a PIL traceback in a DataLoader worker. A file
whose header is fine but whose data is cut short passes that check and fails when it is decoded: `DecodedSplit`
then skips it (data.skip_unreadable=true, counted once per pass) or stops the run in one line naming it. An image
larger than data.max_pixels is refused from its header, at setup and when loaded, before anything is decoded.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import Subset

from lnrepro.data.loading import SplitDataModule
from lnrepro.errors import UserInputError, check_integer

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Friendly names for timm's policy strings ("autoaugment" is what conf/data/imagenet.yaml advertises; timm calls the
# AutoAugment paper's ImageNet policy "original" and fails with a bare AssertionError on names it does not know).
AUTO_AUGMENT_ALIASES = {"autoaugment": "original", "randaugment": "rand-m9-mstd0.5"}
#: data.max_pixels' default: PIL's own `Image.MAX_IMAGE_PIXELS` (1024**3 // 4 // 3), where PIL starts to warn of a
#: decompression bomb (it refuses at twice that), so that PIL never warns about an image accepted here. Decoded as
#: RGB it is 256 MiB per image (times the images the workers hold at once), far above ImageNet's photos (about
#: 0.2 megapixels on average); a lower limit is the user's choice.
DEFAULT_MAX_PIXELS = 89_478_485


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


def check_max_pixels(max_pixels: int | None) -> int | None:
    """data.max_pixels: null or a positive integer, at most PIL's own error limit (above it PIL refuses the file
    anyway, so a larger setting would promise what cannot happen)."""
    from PIL import Image

    check_integer("data.max_pixels", max_pixels, 1, none_allowed=True)
    if max_pixels is not None and Image.MAX_IMAGE_PIXELS is not None and max_pixels > 2 * Image.MAX_IMAGE_PIXELS:
        raise UserInputError(
            f"data.max_pixels={max_pixels} is above {2 * Image.MAX_IMAGE_PIXELS}, where PIL refuses any image as a "
            f"decompression bomb: use at most that, or null"
        )
    return max_pixels


CHECK_THREADS = 8  # the check waits on the disk more than on Python: threads overlap the reads
CHECK_CHUNK = 1024  # paths per task: one future per file would cost more memory than ImageNet's path list
SKIP_HINT = "or set data.skip_unreadable=true to skip such images"


class UnreadableImageError(UserInputError):
    """An image that fails to decode (or is above data.max_pixels) when it is loaded, still one line when it reaches
    the task layer from a DataLoader worker.

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


@contextlib.contextmanager
def truncation_is_an_error() -> Iterator[None]:
    """A truncated file is an error inside, never padded with grey: `ImageFile.LOAD_TRUNCATED_IMAGES`, which any
    imported library may have switched on, is off. A process-wide setting: enter this in one thread (a worker, the
    main process), around threads that inherit it, never in several threads at once."""
    from PIL import ImageFile

    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated


def too_large(image, max_pixels: int | None) -> str | None:
    """Why an opened image (its header read, nothing decoded) is refused for its size, or None."""
    width, height = image.size
    if max_pixels is None or width * height <= max_pixels:
        return None
    return f"{width}x{height} = {width * height} pixels, above data.max_pixels={max_pixels}"


def load_rgb(path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """torchvision's PIL loader, failing with the file's name: a file whose header is fine but whose data is cut
    short passes the check in `setup` and fails only here; an image above `max_pixels` fails before it is decoded."""
    from PIL import Image

    with truncation_is_an_error():
        try:
            with open(path, "rb") as file:
                image = Image.open(file)  # the header only
                size_problem = too_large(image, max_pixels)
                if size_problem is None:
                    return image.convert("RGB")
        except Exception as error:  # truncated data, a bad Huffman table, a decompression bomb: all "cannot use it"
            raise UnreadableImageError(
                f"{path} could not be decoded ({_one_line(error)}); delete or replace it, {SKIP_HINT}"
            ) from error
    raise UnreadableImageError(f"{path} is {size_problem}; shrink or delete it, raise data.max_pixels, {SKIP_HINT}")


def image_problem(path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> str | None:
    """Why PIL cannot read `path` (or it is above `max_pixels`), or None when it can.

    Only the header is parsed (and PNG chunk checksums checked by `verify`): decoding every image of ImageNet
    would take hours, reading its headers takes minutes. Call it inside `truncation_is_an_error`.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            size_problem = too_large(image, max_pixels)
            if size_problem is not None:
                return size_problem
            image.verify()
    except Exception as error:  # not an image, permission denied, a broken header: all mean "cannot train on it"
        return _one_line(error)
    return None


def find_unreadable(paths: list[str], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[str, str]:
    """{path: problem} for each file of `paths` that PIL cannot read or that is above `max_pixels`, in the order
    of `paths`."""

    from PIL.Image import DecompressionBombWarning

    def check(chunk: list[str]) -> list[tuple[str, str | None]]:
        return [(path, image_problem(path, max_pixels)) for path in chunk]

    chunks = [paths[i : i + CHECK_CHUNK] for i in range(0, len(paths), CHECK_CHUNK)]
    # Process-wide settings, made here for the threads: no DecompressionBombWarning for an image that max_pixels
    # refuses itself (once per setup; changing the warning filters per image, when loading, would make every other
    # warning shown once per place show again after each image).
    with truncation_is_an_error(), warnings.catch_warnings(), ThreadPoolExecutor(CHECK_THREADS) as pool:
        if max_pixels is not None:
            warnings.simplefilter("ignore", DecompressionBombWarning)
        return {path: problem for checked in pool.map(check, chunks) for path, problem in checked if problem}


def _leave_out(view, paths: dict[str, str]) -> None:
    """Drop `paths` from an ImageFolder's sample list (and the lists torchvision derives from it)."""
    view.samples = [sample for sample in view.samples if sample[0] not in paths]
    view.imgs = view.samples
    view.targets = [target for _, target in view.samples]


class DecodedSplit(Subset):
    """One split: the images at `indices` of a folder view, whose files may still fail to decode when loaded.

    Without data.skip_unreadable such a file stops the run (`UnreadableImageError`, one line naming it). With it,
    the sample is replaced by the next image of the same split that decodes (position i+1, i+2, ..., wrapping
    around), rather than dropped by the collate function: batches keep their size (training's step count, its
    learning-rate schedule and the batch a resumed run continues at stay what they were; a batch of damaged files
    cannot become empty), the replacement depends on the files alone, not on workers or timing, so a resumed run
    loads the same images, and it never takes an image from another split (no held-out image enters training).
    Evaluation then counts the neighbour twice: one image of the split per damaged file.

    Skips are counted in a shared-memory tensor, one row per process (the main process and each DataLoader worker;
    a row each, so no two processes write the same number): [skips, 1 + view index of the first skip]. The loader
    calls `pass_started` and `pass_ended` (see `lnrepro.data.loading.PassDataLoader`); the end of a pass logs the
    count in one warning and adds it to `skipped`.
    """

    def __init__(self, view, indices: Sequence[int], split: str, skip_unreadable: bool, processes: int = 1):
        super().__init__(view, list(indices))
        self.split = split
        self.skip_unreadable = skip_unreadable
        self.counts = torch.zeros(max(1, processes), 2, dtype=torch.int64).share_memory_()
        self.skipped = 0  # over all passes that ended, in this process

    def __getitem__(self, position: int):
        if not self.skip_unreadable:
            return self.dataset[self.indices[position]]
        for step in range(len(self.indices)):
            index = self.indices[(position + step) % len(self.indices)]
            try:
                return self.dataset[index]
            except UnreadableImageError:
                self._count(index)
        # An UnreadableImageError: still one line when it comes back from a DataLoader worker.
        first = self.dataset.samples[self.indices[0]][0]
        raise UnreadableImageError(f"no image of the {self.split} split could be decoded (the first: {first})")

    def __getitems__(self, positions: list[int]) -> list:
        return [self[position] for position in positions]

    def _count(self, index: int) -> None:
        worker = torch.utils.data.get_worker_info()
        row = self.counts[(0 if worker is None else worker.id + 1) % len(self.counts)]
        row[0] += 1
        if row[1] == 0:
            row[1] = index + 1

    def pass_started(self) -> None:
        self.counts.zero_()

    def pass_ended(self) -> None:
        count = int(self.counts[:, 0].sum())
        if not count:
            return
        first = min(int(index) - 1 for index in self.counts[:, 1] if index > 0)
        log.warning(
            "data.skip_unreadable=true: %d image(s) of the %s split failed to decode in this pass and were replaced "
            "by the next readable one (the first: %s)",
            count,
            self.split,
            self.dataset.samples[first][0],
        )
        self.skipped += count
        self.counts.zero_()


class ImageFolderDataModule(SplitDataModule):
    drop_last_train = True  # full batches only: BN statistics of a tiny last batch are noise
    # the normalisation of both transforms, and the class folder names once set up (export.json states them)
    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    class_names: list[str] | None = None

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
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
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
        self.max_pixels = check_max_pixels(max_pixels)
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
        unreadable = find_unreadable(paths, self.max_pixels)
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

    @property
    def unreadable_skipped(self) -> dict[str, int]:
        """{split: images that failed to decode and were skipped} over the passes that ended in this process."""
        splits = {"train": self.train_set, "val": self.val_set, "test": self.test_set}
        return {name: split.skipped for name, split in splits.items() if isinstance(split, DecodedSplit)}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from torchvision.datasets import ImageFolder

        train_folder, test_folder = self._folder("train"), self._folder("val")
        load = functools.partial(load_rgb, max_pixels=self.max_pixels)
        train_view = ImageFolder(str(train_folder), transform=self.train_transform, loader=load)
        eval_view = ImageFolder(str(train_folder), transform=self.eval_transform, loader=load)
        test_view = ImageFolder(str(test_folder), transform=self.eval_transform, loader=load)
        if self.expected_classes != len(train_view.classes):
            raise UserInputError(
                f"{train_folder} has {len(train_view.classes)} class folders but data.num_classes="
                f"{self.expected_classes}; set data.num_classes={len(train_view.classes)}"
            )
        if train_view.classes != test_view.classes:
            raise UserInputError(f"train/ and val/ in {self.root} have different class folders")
        self.class_names = list(train_view.classes)
        self._leave_out_unreadable(train_view, eval_view, test_view)
        count = len(train_view)
        if not 0 < self.val_size < count:
            raise UserInputError(f"data.val_size must be between 1 and {count - 1} (got {self.val_size})")
        permutation = torch.randperm(count, generator=torch.Generator().manual_seed(self.split_seed))
        train_index = permutation[self.val_size :].sort().values
        if self.subset is not None:
            train_index = train_index[: self.subset]

        def split(view, indices, name: str) -> DecodedSplit:
            return DecodedSplit(view, indices, name, self.skip_unreadable, processes=self.num_workers + 1)

        self.train_set = split(train_view, train_index.tolist(), "train")
        # the training images with the evaluation transform: what int8 calibrates on (no augmentation)
        self.calibration_set = split(eval_view, train_index.tolist(), "calibration")
        self.val_set = split(eval_view, permutation[: self.val_size].sort().values.tolist(), "val")
        self.test_set = split(test_view, range(len(test_view)), "test")
