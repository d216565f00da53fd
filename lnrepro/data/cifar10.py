"""CIFAR-10 from torchvision's `cifar-10-batches-py` layout, held in memory, augmented on the device."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from lnrepro.data.in_memory import InMemoryImageDataModule, TensorImageDataset
from lnrepro.errors import UserInputError

log = logging.getLogger(__name__)

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
IMAGES_PER_FILE = 10_000
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def _official_md5() -> dict[str, str]:
    from torchvision.datasets import CIFAR10

    return {name: md5 for name, md5 in (*CIFAR10.train_list, *CIFAR10.test_list)}


def find_missing_files(root: str | Path) -> list[str]:
    folder = Path(root) / FOLDER
    return [name for name in (*TRAIN_FILES, *TEST_FILES, "batches.meta") if not (folder / name).is_file()]


def download(root: str | Path) -> None:
    """Download and extract through torchvision (it checks the archive's md5)."""
    from torchvision.datasets import CIFAR10

    Path(root).mkdir(parents=True, exist_ok=True)
    try:
        CIFAR10(str(root), train=True, download=True)
    except Exception as error:  # URLError, timeouts, SSL errors, a bad archive: all mean "not here"
        raise UserInputError(
            f"CIFAR-10 is not in data.root={root} and downloading it failed ({type(error).__name__}: {error}). "
            f"Place the extracted '{FOLDER}' folder (from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) "
            f"inside {root}, or set data.root to the folder that holds it."
        ) from error


def verify_checksums(root: str | Path, names: tuple[str, ...]) -> None:
    from torchvision.datasets.utils import check_integrity

    expected = _official_md5()
    for name in names:
        path = Path(root) / FOLDER / name
        if not check_integrity(str(path), expected[name]):
            raise UserInputError(
                f"{path} does not match the official CIFAR-10 md5 checksum (corrupted, or a re-packed copy). "
                f"Delete the folder and re-download (data.download=true), or, for a copy you trust, "
                f"set data.verify_checksums=false."
            )


def read_batches(root: str | Path, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The pickled batches as uint8 images (N, 3, 32, 32) and int64 labels, in file order."""
    images, labels = [], []
    for name in names:
        path = Path(root) / FOLDER / name
        try:
            with open(path, "rb") as file:
                entry = pickle.load(file, encoding="latin1")
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            batch_labels = torch.as_tensor(entry["labels"] if "labels" in entry else entry["fine_labels"],
                                           dtype=torch.long)
            if batch_labels.shape != (len(data),):
                raise ValueError(f"{len(data)} images but {batch_labels.numel()} labels")
            if len(batch_labels) and not 0 <= int(batch_labels.min()) <= int(batch_labels.max()) < 10:
                raise ValueError(f"labels outside 0..9 (min {int(batch_labels.min())}, "
                                 f"max {int(batch_labels.max())})")
        # Damaged bytes can make unpickling fail in almost any way (UnpicklingError, EOFError, OverflowError,
        # MemoryError, ImportError from a garbled opcode, ...): all of them mean the same thing here.
        except Exception as error:
            raise UserInputError(
                f"{path} is not a readable CIFAR-10 batch ({type(error).__name__}: {error}); "
                f"delete it and re-download (data.download=true)."
            ) from error
        images.append(torch.from_numpy(data.copy()))
        labels.append(batch_labels)
    return torch.cat(images), torch.cat(labels)


def split_train_val(count: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded hold-out: `val_size` random indices for validation, the rest (in file order) for training."""
    if not 0 < val_size < count:
        raise UserInputError(f"data.val_size must be between 1 and {count - 1} (got {val_size})")
    permutation = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return permutation[val_size:].sort().values, permutation[:val_size].sort().values


class CIFAR10DataModule(InMemoryImageDataModule):
    """Training images: random crop (`crop_padding` pixels of zero padding, 0 = off) + horizontal flip (`flip`)
    (+ optional cutout) on the device.

    The validation split is held out of the 50,000 training images (seeded, `val_size`); the official 10,000 test
    images are used only by `trainer.test`, never for model selection. `subset` keeps the first N training images
    that remain after the hold-out.
    """

    mean = MEAN
    std = STD
    num_classes = 10

    def __init__(
        self,
        root: str = "data/cifar10",
        download: bool = True,
        verify_checksums: bool = True,
        batch_size: int = 128,
        num_workers: int = 0,
        subset: int | None = None,
        val_size: int = 5000,
        split_seed: int = 0,
        crop_padding: int = 4,
        flip: bool = True,
        cutout: int = 0,
        pin_memory: bool = True,
        num_classes: int = 10,
        image_size: int = 32,
        shuffle_seed: int = 0,
        stem: str | None = None,  # read by the model config, not here
        name: str = "cifar10",  # read by reports
    ):
        super().__init__(batch_size, num_workers, pin_memory, crop_padding=crop_padding, flip=flip, cutout=cutout,
                         shuffle_seed=shuffle_seed)
        if subset is not None and subset <= 0:
            raise UserInputError(f"data.subset must be a positive number of images or null (got {subset})")
        if num_classes != 10 or image_size != 32:
            raise UserInputError("CIFAR-10 has 10 classes of 32x32 images: leave data.num_classes and data.image_size")
        self.root = Path(root).expanduser()
        self.download = download
        self.verify = verify_checksums
        self.subset = subset
        self.val_size = val_size
        self.split_seed = split_seed

    def prepare_data(self) -> None:
        missing = find_missing_files(self.root)
        if not missing:
            return
        if not self.download:
            raise UserInputError(
                f"CIFAR-10 files {missing} are missing from {self.root / FOLDER}. Set data.root to the folder that "
                f"holds '{FOLDER}', or set data.download=true to fetch it."
            )
        log.info("CIFAR-10 not found in %s: downloading", self.root)
        download(self.root)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()  # idempotent; covers setup() called without a Trainer
        if self.verify:
            verify_checksums(self.root, TRAIN_FILES + TEST_FILES)
        else:
            log.warning("data.verify_checksums=false: CIFAR-10 files in %s are used without checking them", self.root)
        images, labels = read_batches(self.root, TRAIN_FILES)
        train_index, val_index = split_train_val(len(images), self.val_size, self.split_seed)
        if self.subset is not None:
            train_index = train_index[: self.subset]
        self.train_set = TensorImageDataset(images[train_index], labels[train_index])
        self.val_set = TensorImageDataset(images[val_index], labels[val_index])
        self.test_set = TensorImageDataset(*read_batches(self.root, TEST_FILES))
        log.info("CIFAR-10: %d train / %d val / %d test images", len(self.train_set), len(self.val_set),
                 len(self.test_set))
