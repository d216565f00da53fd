"""CIFAR-10 from torchvision's `cifar-10-batches-py` layout, held in memory, augmented on the device."""

from __future__ import annotations

import _codecs
import fcntl
import logging
import pickle
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from lnrepro.data.in_memory import InMemoryImageDataModule, TensorImageDataset
from lnrepro.errors import UserInputError

log = logging.getLogger(__name__)

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
# In data.root, next to the folder it guards. Never deleted: removing a lock file while another run waits on it
# would let a third run lock a new file with the same name and download alongside the second.
LOCK_FILE = ".cifar-10-download.lock"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
# label 0-9 in order, as batches.meta's label_names lists them (what an exported network's export.json names)
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _official_md5() -> dict[str, str]:
    from torchvision.datasets import CIFAR10

    return {name: md5 for name, md5 in (*CIFAR10.train_list, *CIFAR10.test_list)}


def find_missing_files(root: str | Path) -> list[str]:
    folder = Path(root) / FOLDER
    return [name for name in (*TRAIN_FILES, *TEST_FILES, "batches.meta") if not (folder / name).is_file()]


def _open_lock(root: Path):
    """The lock file opened for `flock`, or None where no lock is needed or none can be had.

    A run that downloads creates the lock file before it writes anything, so complete files with no lock file
    beside them (looked for in that order) cannot be a download in progress: nothing is written into such a folder.
    A folder this process cannot write to cannot be downloaded into by it either (a read-only shared copy).
    """
    path = root / LOCK_FILE
    if not find_missing_files(root) and not path.exists():
        return None
    try:
        if not path.exists():
            root.mkdir(parents=True, exist_ok=True)
            path.touch()
        return open(path, "rb")  # flock needs no write access
    except OSError:
        return None


@contextmanager
def download_lock(root: Path):
    """Hold an exclusive lock on `root`/LOCK_FILE while the files are checked, downloaded and extracted.

    Two runs that find the same empty folder at the same moment would otherwise both download and extract into it,
    each overwriting files the other is reading.
    """
    file = _open_lock(root)
    if file is None:
        yield
        return
    with file:  # closing the file releases the lock, also when the download fails
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("Another run is downloading CIFAR-10 into %s: waiting for it (lock %s)", root, file.name)
            fcntl.flock(file, fcntl.LOCK_EX)
        yield


def download(root: str | Path) -> None:
    """Download and extract through torchvision (it checks the archive's md5)."""
    from torchvision.datasets import CIFAR10

    try:
        Path(root).mkdir(parents=True, exist_ok=True)  # inside: an unwritable root is "not here" too
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


def _batch_globals() -> dict[tuple[str, str], object]:
    """Every global a CIFAR-10 batch file may name, mapped to the object it means.

    The official files (Python 2, numpy 1) name numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype;
    copies re-pickled under numpy 2 say numpy._core; pickle protocol 2 under Python 3 stores bytes through
    _codecs.encode, and protocol 5 (Python 3.14's default) stores arrays through numeric._frombuffer. The objects
    come from numpy's own pickling, never from importing a name out of the file (numpy.core warns under numpy 2).
    """
    reconstruct = np.ndarray((0,)).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,
    }


class BatchUnpickler(pickle.Unpickler):
    """Reads a CIFAR-10 batch file as data.

    `pickle.load` calls whatever global a file names, so a crafted "batch" runs any command (`os.system`), and with
    data.verify_checksums=false no checksum stands in the way. A batch needs only numpy's array rebuilding.
    """

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")  # the official files are Python 2 pickles of str
        self.path = path

    def find_class(self, module: str, name: str):
        allowed = _batch_globals().get((module, name))
        if allowed is None:
            raise UserInputError(
                f"{self.path} is not a CIFAR-10 batch: it asks to load the global {module}.{name}, which a batch "
                f"file never does, so it was not read. Delete it and re-download (data.download=true)."
            )
        return allowed


def load_batch(path: Path):
    """One batch file's pickled dict (or whatever data it holds), refusing anything that is not plain data."""
    with open(path, "rb") as file:
        return BatchUnpickler(file, path).load()


def read_batches(root: str | Path, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The pickled batches as uint8 images (N, 3, 32, 32) and int64 labels, in file order."""
    images, labels = [], []
    for name in names:
        path = Path(root) / FOLDER / name
        try:
            entry = load_batch(path)
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            batch_labels = torch.as_tensor(
                entry["labels"] if "labels" in entry else entry["fine_labels"], dtype=torch.long
            )
            if batch_labels.shape != (len(data),):
                raise ValueError(f"{len(data)} images but {batch_labels.numel()} labels")
            if len(batch_labels) and not 0 <= int(batch_labels.min()) <= int(batch_labels.max()) < 10:
                raise ValueError(f"labels outside 0..9 (min {int(batch_labels.min())}, max {int(batch_labels.max())})")
        except UserInputError:  # refused by BatchUnpickler: its message says why
            raise
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
    class_names = CLASS_NAMES

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
        super().__init__(
            batch_size,
            num_workers,
            pin_memory,
            crop_padding=crop_padding,
            flip=flip,
            cutout=cutout,
            shuffle_seed=shuffle_seed,
        )
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
        if not self.download:
            missing = find_missing_files(self.root)
            if missing:
                raise UserInputError(
                    f"CIFAR-10 files {missing} are missing from {self.root / FOLDER}. Set data.root to the folder "
                    f"that holds '{FOLDER}', or set data.download=true to fetch it."
                )
            return
        # The check is inside the lock too: a run that waited for another's download then finds the files, and
        # a run that comes during an extraction does not take a half-written last file for a whole one.
        with download_lock(self.root):
            if find_missing_files(self.root):
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
        log.info(
            "CIFAR-10: %d train / %d val / %d test images", len(self.train_set), len(self.val_set), len(self.test_set)
        )
