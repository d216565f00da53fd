"""The data layer: in-memory CIFAR-10 (real pickle format), batch augmentation, loaders, ImageNet-style folders.

No network: the download path is exercised with urllib and sockets patched to fail. The last tests read the real
copy in ../shared/data/cifar10 and are skipped when it is absent.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import socket
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lnrepro.data import batch_augment
from lnrepro.data.cifar10 import FOLDER, MEAN, STD, TEST_FILES, TRAIN_FILES, CIFAR10DataModule
from lnrepro.data.in_memory import TensorImageDataset
from lnrepro.data.loading import EpochShuffleSampler
from lnrepro.errors import UserInputError
from tests.conftest import SHARED_CIFAR10

PER_FILE = 40  # images per batch file written by the `fake_cifar10` fixture: 200 train, 40 test


# --------------------------------------------------------------------------------------------------------------------
# CIFAR-10 from the pickle files
# --------------------------------------------------------------------------------------------------------------------


def read_pickles(root: Path, names) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: the batch files read here independently of lnrepro, in file order."""
    images, labels = [], []
    for name in names:
        with open(root / FOLDER / name, "rb") as file:
            entry = pickle.load(file, encoding="latin1")
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels += entry["labels"]
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels)


def positions_in(images: torch.Tensor, reference: torch.Tensor) -> list[int]:
    """Where each image sits in `reference` (file order). The fake images are random, so each one is unique."""
    lookup = {image.numpy().tobytes(): i for i, image in enumerate(reference)}
    assert len(lookup) == len(reference)
    return [lookup[image.numpy().tobytes()] for image in images]


def cifar(root: Path, **overrides) -> CIFAR10DataModule:
    kwargs = dict(root=str(root), download=False, verify_checksums=False, batch_size=16, val_size=50, pin_memory=False)
    datamodule = CIFAR10DataModule(**{**kwargs, **overrides})
    datamodule.setup()
    return datamodule


def test_cifar10_splits_shapes_dtypes_and_test_order(fake_cifar10):
    datamodule = cifar(fake_cifar10)
    train, val, test = datamodule.train_set, datamodule.val_set, datamodule.test_set
    assert (len(train), len(val), len(test)) == (5 * PER_FILE - 50, 50, PER_FILE)
    for split in (train, val, test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (3, 32, 32)
        assert split.labels.dtype == torch.int64 and split.labels.shape == (len(split.images),)

    all_images, all_labels = read_pickles(fake_cifar10, TRAIN_FILES)
    train_pos, val_pos = positions_in(train.images, all_images), positions_in(val.images, all_images)
    assert not set(train_pos) & set(val_pos)
    assert sorted(train_pos + val_pos) == list(range(5 * PER_FILE))  # nothing lost, nothing duplicated
    assert train_pos == sorted(train_pos)  # the training images stay in file order
    assert torch.equal(train.labels, all_labels[train_pos]) and torch.equal(val.labels, all_labels[val_pos])

    test_images, test_labels = read_pickles(fake_cifar10, TEST_FILES)
    assert torch.equal(test.images, test_images) and torch.equal(test.labels, test_labels)


def test_cifar10_validation_hold_out_is_seeded(fake_cifar10):
    all_images, _ = read_pickles(fake_cifar10, TRAIN_FILES)

    def val_positions(seed: int) -> list[int]:
        return positions_in(cifar(fake_cifar10, split_seed=seed).val_set.images, all_images)

    first = val_positions(0)
    assert val_positions(0) == first
    assert val_positions(1) != first
    # A random hold-out, not the first or last 50 images.
    assert first != list(range(50)) and first != list(range(150, 200))


def test_cifar10_subset_keeps_the_first_n_remaining_training_images(fake_cifar10):
    full = cifar(fake_cifar10)
    subset = cifar(fake_cifar10, subset=30)
    assert len(subset.train_set) == 30
    assert torch.equal(subset.train_set.images, full.train_set.images[:30])
    assert torch.equal(subset.train_set.labels, full.train_set.labels[:30])
    # The hold-out and the test set do not depend on the subset.
    assert torch.equal(subset.val_set.images, full.val_set.images)
    assert torch.equal(subset.test_set.images, full.test_set.images)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(subset=0), "data.subset"),
        (dict(val_size=0), "data.val_size"),
        (dict(val_size=200), "data.val_size"),
        (dict(num_classes=100), "data.num_classes"),
        (dict(batch_size=0), "data.batch_size"),
    ],
)
def test_cifar10_impossible_settings(fake_cifar10, overrides, message):
    with pytest.raises(UserInputError, match=message):
        cifar(fake_cifar10, **overrides)


def test_checksum_mismatch_names_the_switch(fake_cifar10):
    with pytest.raises(UserInputError, match=r"data_batch_1 does not match the official CIFAR-10 md5") as error:
        cifar(fake_cifar10, verify_checksums=True)
    assert "data.verify_checksums=false" in str(error.value)


def test_checksums_that_match_load_without_warning(fake_cifar10, monkeypatch, caplog):
    # Make the fake files "official": verification must then compute and compare, not just refuse.
    md5 = {
        name: hashlib.md5((fake_cifar10 / FOLDER / name).read_bytes()).hexdigest() for name in TRAIN_FILES + TEST_FILES
    }
    monkeypatch.setattr("lnrepro.data.cifar10._official_md5", lambda: md5)
    with caplog.at_level(logging.WARNING):
        datamodule = cifar(fake_cifar10, verify_checksums=True)
    assert len(datamodule.train_set) == 150
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    # One changed byte in the test file is caught.
    path = fake_cifar10 / FOLDER / "test_batch"
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(UserInputError, match="test_batch does not match"):
        cifar(fake_cifar10, verify_checksums=True)


def test_unverified_load_logs_a_warning(fake_cifar10, caplog):
    with caplog.at_level(logging.WARNING, logger="lnrepro"):
        datamodule = cifar(fake_cifar10, verify_checksums=False)
    assert len(datamodule.train_set) == 150
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "data.verify_checksums=false" in r.getMessage() and str(fake_cifar10) in r.getMessage() for r in warnings
    ), [r.getMessage() for r in warnings]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())


def _rewrite(path: Path, change) -> None:
    with open(path, "rb") as file:
        entry = pickle.load(file, encoding="latin1")
    change(entry)
    with open(path, "wb") as file:
        pickle.dump(entry, file)


def _missing_label(path: Path) -> None:
    _rewrite(path, lambda entry: entry["labels"].pop())


def _label_out_of_range(path: Path) -> None:
    _rewrite(path, lambda entry: entry["labels"].__setitem__(3, 10))


def _wrong_image_size(path: Path) -> None:
    _rewrite(path, lambda entry: entry.__setitem__("data", entry["data"][:, :1000]))


def _not_a_batch(path: Path) -> None:
    with open(path, "wb") as file:
        pickle.dump([1, 2, 3], file)


@pytest.mark.parametrize(
    "damage", [_truncate, _empty, _garbage, _missing_label, _label_out_of_range, _wrong_image_size, _not_a_batch]
)
@pytest.mark.parametrize("name", ["data_batch_3", "test_batch"])
def test_corrupt_batch_file_is_named(fake_cifar10, damage, name):
    path = fake_cifar10 / FOLDER / name
    damage(path)
    with pytest.raises(UserInputError) as error:
        cifar(fake_cifar10)
    message = str(error.value)
    assert str(path) in message and "not a readable CIFAR-10 batch" in message
    assert "\n" not in message  # one line


def test_missing_data_without_download_names_root_and_download(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(UserInputError) as error:
        cifar(root)
    message = str(error.value)
    assert "data.root" in message and "data.download=true" in message and str(root) in message


def test_one_missing_file_is_named(fake_cifar10):
    (fake_cifar10 / FOLDER / "data_batch_4").unlink()
    with pytest.raises(UserInputError, match=r"\['data_batch_4'\] are missing"):
        cifar(fake_cifar10)


@pytest.fixture
def no_network(monkeypatch):
    """Every way out fails like a machine without network; returns the list of URLs torchvision tried."""
    tried = []

    def refuse(request, *args, **kwargs):
        tried.append(getattr(request, "full_url", request))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    def no_socket(*args, **kwargs):
        raise OSError("the test suite does not use the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", no_socket)
    monkeypatch.setattr(socket.socket, "connect", no_socket)
    return tried


def test_offline_download_says_where_to_put_the_files(tmp_path, no_network):
    root = tmp_path / "cifar10"
    with pytest.raises(UserInputError) as error:
        cifar(root, download=True)
    message = str(error.value)
    assert no_network and all("cifar-10-python.tar.gz" in url for url in no_network)  # torchvision's path ran
    assert isinstance(error.value.__cause__, urllib.error.URLError)
    assert f"data.root={root}" in message
    assert "Place the extracted 'cifar-10-batches-py' folder" in message and "cifar-10-python.tar.gz" in message
    assert "\n" not in message


# --------------------------------------------------------------------------------------------------------------------
# Batch augmentation
# --------------------------------------------------------------------------------------------------------------------


def find_window(output: torch.Tensor, image: torch.Tensor, padding: int) -> list[tuple[int, int, bool]]:
    """Every (dy, dx, flipped) for which `output` is that window of the zero-padded `image` (flipped or not)."""
    height, width = image.shape[-2:]
    padded = F.pad(image, (padding,) * 4)
    found = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            window = padded[:, dy : dy + height, dx : dx + width]
            found += [
                (dy, dx, flipped)
                for flipped in (False, True)
                if torch.equal(output, window.flip(-1) if flipped else window)
            ]
    return found


@pytest.mark.parametrize(
    "shape, padding, dtype", [((64, 3, 32, 32), 4, torch.uint8), ((48, 2, 12, 20), 3, torch.float32)]
)
def test_random_crop_flip_is_a_window_of_the_padded_image(shape, padding, dtype):
    torch.manual_seed(0)
    images = torch.randint(1, 256, shape).to(dtype)  # no zeros: padding is recognisable
    out = batch_augment.random_crop_flip(images, padding, 0.5)
    assert out.shape == images.shape and out.dtype == dtype
    offsets = []
    for output, image in zip(out, images):
        found = find_window(output, image, padding)
        assert len(found) == 1, found  # random pixels: exactly one window and flip explain each output
        offsets.append(found[0])
    dys, dxs, flips = zip(*offsets)
    assert set(dys) == set(dxs) == set(range(2 * padding + 1))  # every offset occurs (fixed seed)
    assert 0.25 < sum(flips) / len(flips) < 0.75
    assert len(set(offsets)) > len(offsets) // 3  # per-image draws, not one crop for the batch


def test_random_crop_flip_differs_per_image_of_one_batch():
    torch.manual_seed(1)
    image = torch.randint(1, 256, (1, 3, 32, 32), dtype=torch.uint8)
    out = batch_augment.random_crop_flip(image.expand(64, -1, -1, -1).contiguous(), 4, 0.5)
    distinct = {o.numpy().tobytes() for o in out}
    # 162 equally likely (offset, flip) pairs: 64 draws give ~53 distinct on average.
    assert len(distinct) > 35


def test_flip_probability_one_flips_every_crop():
    torch.manual_seed(2)
    images = torch.randint(1, 256, (16, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(batch_augment.random_crop_flip(images, 0, 1.0), images.flip(-1))
    out = batch_augment.random_crop_flip(images, 4, 1.0)
    for output, image in zip(out, images):
        found = find_window(output, image, 4)
        assert len(found) == 1 and found[0][2], found


def test_no_padding_and_no_flip_is_the_identity():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(batch_augment.random_crop_flip(images, 0, 0.0), images)


def test_normalize_matches_the_formula():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    expected = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    out = batch_augment.normalize(images, MEAN, STD)
    assert out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-5)
    # Also after a crop, whose output is a strided view.
    cropped = batch_augment.random_crop_flip(images, 4, 0.5)
    assert batch_augment.normalize(cropped, MEAN, STD).is_contiguous()


@pytest.mark.parametrize("size", [8, 5])
def test_cutout_zeroes_one_square_and_nothing_else(size):
    torch.manual_seed(3)
    images = torch.rand(64, 3, 32, 32) + 0.5  # no zeros
    out = batch_augment.cutout(images, size)
    full_squares = 0
    for output, image in zip(out, images):
        zero = output == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])  # the same square in every channel
        assert torch.equal(output[~zero], image[~zero])  # everything else untouched
        rows = zero[0].any(1).nonzero().flatten()
        cols = zero[0].any(0).nonzero().flatten()
        assert len(rows) > 0, "every image gets a square (its centre is always inside)"
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert zero[0].sum() == (bottom - top) * (right - left)  # a filled rectangle
        assert zero[0, top:bottom, left:right].all()
        height, width = bottom - top, right - left
        assert height <= size and width <= size
        if 0 < top and bottom < 32:
            assert height == size
        if 0 < left and right < 32:
            assert width == size
        full_squares += int(height == size and width == size)
    assert 10 < full_squares < 64  # some squares inside, some clipped by the border
    assert torch.equal(batch_augment.cutout(images, 0), images)


# --------------------------------------------------------------------------------------------------------------------
# The data module's device hook and loaders
# --------------------------------------------------------------------------------------------------------------------


def test_on_after_batch_transfer_augments_only_in_training(fake_cifar10):
    datamodule = cifar(fake_cifar10)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.dtype == torch.uint8  # batches travel as uint8
    plain = batch_augment.normalize(images, MEAN, STD)

    for trainer in (None, SimpleNamespace(training=False)):
        datamodule.trainer = trainer
        out, out_labels = datamodule.on_after_batch_transfer((images, labels), 0)
        assert out.dtype == torch.float32 and torch.equal(out, plain) and torch.equal(out_labels, labels)

    datamodule.trainer = SimpleNamespace(training=True)
    torch.manual_seed(4)
    out, out_labels = datamodule.on_after_batch_transfer((images, labels), 0)
    torch.manual_seed(4)
    expected = batch_augment.normalize(batch_augment.random_crop_flip(images, 4, 0.5), MEAN, STD)
    assert out.dtype == torch.float32 and out.shape == images.shape and torch.equal(out_labels, labels)
    assert torch.equal(out, expected) and not torch.equal(out, plain)


def test_cutout_is_applied_in_training_only(fake_cifar10):
    datamodule = cifar(fake_cifar10, cutout=8)
    images, labels = next(iter(datamodule.train_dataloader()))
    datamodule.trainer = SimpleNamespace(training=False)
    evaluated, _ = datamodule.on_after_batch_transfer((images, labels), 0)
    datamodule.trainer = SimpleNamespace(training=True)
    trained, _ = datamodule.on_after_batch_transfer((images, labels), 0)
    zero_pixels = (trained == 0).all(1).flatten(1).sum(1)  # per image, pixels zero in every channel
    assert (zero_pixels >= 4 * 4).all() and (zero_pixels <= 8 * 8).all()
    assert ((evaluated == 0).all(1).flatten(1).sum(1) == 0).all()


def test_loader_fetches_each_batch_with_one_index(fake_cifar10, monkeypatch):
    datamodule = cifar(fake_cifar10)
    calls = []
    fetch = TensorImageDataset.__getitems__

    def counting(self, indices):
        calls.append(list(indices))
        return fetch(self, indices)

    def per_image(self, index):
        raise AssertionError("__getitem__ called: the loader fetched image by image")

    monkeypatch.setattr(TensorImageDataset, "__getitems__", counting)
    monkeypatch.setattr(TensorImageDataset, "__getitem__", per_image)
    train = datamodule.train_set
    batches = list(datamodule.train_dataloader())
    assert len(batches) == len(calls) == 10  # 150 images, batch 16
    assert sorted(i for call in calls for i in call) == list(range(150))  # every image once per epoch
    for (images, labels), indices in zip(batches, calls):
        assert torch.equal(images, train.images[indices]) and torch.equal(labels, train.labels[indices])
    assert calls != [list(range(i, min(i + 16, 150))) for i in range(0, 150, 16)]  # shuffled
    # Validation and test keep their order.
    calls.clear()
    val_labels = torch.cat([labels for _, labels in datamodule.val_dataloader()])
    assert torch.equal(val_labels, datamodule.val_set.labels) and calls[0] == list(range(16))


def test_epoch_shuffle_is_a_function_of_seed_and_epoch(fake_cifar10):
    def order(seed: int, epoch: int) -> list[int]:
        sampler = EpochShuffleSampler(100, seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    torch.manual_seed(0)
    first = order(3, 0)
    torch.manual_seed(1)  # the global RNG plays no part
    assert order(3, 0) == first
    assert sorted(first) == list(range(100)) and len(EpochShuffleSampler(100, 3)) == 100
    assert len({tuple(order(3, epoch)) for epoch in range(5)}) == 5
    assert order(4, 0) != first

    # The training loader follows its sampler's epoch.
    datamodule = cifar(fake_cifar10, shuffle_seed=7)
    loader = datamodule.train_dataloader()
    assert isinstance(loader.sampler, EpochShuffleSampler) and loader.sampler.seed == 7
    loader.sampler.set_epoch(2)
    labels = torch.cat([labels for _, labels in loader])
    reference = EpochShuffleSampler(150, 7)
    reference.set_epoch(2)
    assert torch.equal(labels, datamodule.train_set.labels[list(reference)])


# --------------------------------------------------------------------------------------------------------------------
# ImageNet-style class folders
# --------------------------------------------------------------------------------------------------------------------

CLASSES = ("n01", "n02", "n03")
IMAGENET_LOW = min((0 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
IMAGENET_HIGH = max((1 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))


@pytest.fixture
def image_tree(tmp_path) -> Path:
    """3 classes x 6 JPEGs (48x40) in train/, 3 x 2 in val/."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "imagenet"
    for split, count in (("train", 6), ("val", 2)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i}.JPEG", quality=90)
    return root


def imagefolder(root: Path, **overrides):
    from lnrepro.data.imagenet import ImageFolderDataModule

    kwargs = dict(
        root=str(root),
        batch_size=4,
        num_workers=0,
        val_size=3,
        train_crop=32,
        eval_resize=36,
        eval_crop=32,
        num_classes=3,
        pin_memory=False,
    )
    return ImageFolderDataModule(**{**kwargs, **overrides})


def test_image_folders_split_and_batch(image_tree):
    datamodule = imagefolder(image_tree)
    datamodule.setup()
    assert (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)) == (15, 3, 6)
    assert not set(datamodule.train_set.indices) & set(datamodule.val_set.indices)
    assert sorted(datamodule.test_set.dataset.targets) == [0, 0, 1, 1, 2, 2]

    loader = datamodule.train_dataloader()
    assert len(loader) == 3  # 15 images, batch 4, the incomplete batch dropped
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert IMAGENET_LOW - 1e-4 <= images.min() < 0 and 0 < images.max() <= IMAGENET_HIGH + 1e-4  # normalised

    # Evaluation: resize + centre crop, the same every time; every image is kept.
    first = torch.cat([x for x, _ in datamodule.test_dataloader()])
    again = torch.cat([x for x, _ in datamodule.test_dataloader()])
    assert first.shape == (6, 3, 32, 32) and torch.equal(first, again)
    assert len(torch.cat([x for x, _ in datamodule.val_dataloader()])) == 3

    subset = imagefolder(image_tree, subset=5)
    subset.setup()
    assert len(subset.train_set) == 5 and subset.train_set.indices == datamodule.train_set.indices[:5]


def test_image_folder_hold_out_is_seeded(image_tree):
    def val_indices(seed):
        datamodule = imagefolder(image_tree, split_seed=seed, val_size=6)
        datamodule.setup()
        return datamodule.val_set.indices

    assert val_indices(0) == val_indices(0) != val_indices(1)


@pytest.mark.parametrize(
    "options, names",
    [
        (dict(auto_augment="rand-m9-mstd0.5"), ["RandAugment"]),
        (dict(auto_augment="autoaugment"), ["AutoAugment"]),
        (dict(random_erasing=0.5), ["RandomErasing"]),
        (dict(color_jitter=0.4), ["ColorJitter"]),
        (dict(auto_augment="rand-m9-mstd0.5", random_erasing=0.25, color_jitter=0.4), ["RandAugment", "RandomErasing"]),
    ],
)
def test_image_folder_augmentations_build_and_run(image_tree, options, names):
    datamodule = imagefolder(image_tree, **options)
    datamodule.setup()
    transform = repr(datamodule.train_set.dataset.transform)
    for name in names:
        assert name in transform, transform
    for images, labels in datamodule.train_dataloader():
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and torch.isfinite(images).all()
        assert ((labels >= 0) & (labels < 3)).all()


def test_image_folder_bad_input(image_tree, tmp_path):
    with pytest.raises(UserInputError, match="data.root"):
        imagefolder(tmp_path / "nowhere").setup()
    with pytest.raises(UserInputError, match=r"has 3 class folders but data.num_classes=5; set data.num_classes=3"):
        imagefolder(image_tree, num_classes=5).setup()
    with pytest.raises(UserInputError, match="data.auto_augment='bogus'"):
        imagefolder(image_tree, auto_augment="bogus")
    with pytest.raises(UserInputError, match="data.eval_crop"):
        imagefolder(image_tree, eval_crop=40)
    with pytest.raises(UserInputError, match="data.val_size"):
        imagefolder(image_tree, val_size=18).setup()

    (image_tree / "val" / "n03").rename(image_tree / "val" / "n04")
    with pytest.raises(UserInputError, match="different class folders"):
        imagefolder(image_tree).setup()
    for child in (image_tree / "val").iterdir():
        for file in child.iterdir():
            file.unlink()
        child.rmdir()
    (image_tree / "val").rmdir()
    with pytest.raises(UserInputError, match=r"val does not exist"):
        imagefolder(image_tree).setup()


# --------------------------------------------------------------------------------------------------------------------
# The real copy in ../shared/data/cifar10
# --------------------------------------------------------------------------------------------------------------------

needs_real_cifar10 = pytest.mark.skipif(not (SHARED_CIFAR10 / FOLDER).is_dir(), reason=f"{SHARED_CIFAR10} is absent")


@needs_real_cifar10
def test_real_cifar10_loads_unverified():
    datamodule = CIFAR10DataModule(root=str(SHARED_CIFAR10), download=False, verify_checksums=False, pin_memory=False)
    datamodule.setup()
    train, val, test = datamodule.train_set, datamodule.val_set, datamodule.test_set
    assert (len(train), len(val), len(test)) == (45_000, 5_000, 10_000)
    for split, expected in ((train, 4500), (val, 500), (test, 1000)):
        counts = torch.bincount(split.labels, minlength=10)
        assert len(counts) == 10 and split.labels.min() == 0 and split.labels.max() == 9
        assert ((counts - expected).abs() <= 0.1 * expected).all(), counts.tolist()
    mean = train.images[:5000].float().mean((0, 2, 3)) / 255
    torch.testing.assert_close(mean, torch.tensor(MEAN), atol=0.02, rtol=0)  # real photographs, not noise


@needs_real_cifar10
def test_real_cifar10_copy_fails_verification_clearly():
    datamodule = CIFAR10DataModule(root=str(SHARED_CIFAR10), download=False, verify_checksums=True, pin_memory=False)
    with pytest.raises(UserInputError, match=r"does not match the official CIFAR-10 md5.*data\.verify_checksums=false"):
        datamodule.setup()
