"""Data files are data: batch files that try to run code, runs racing to download, and images that do not decode.

CIFAR-10 batch files are read by a restricted unpickler: the crafted files here would run a command under
`pickle.load`. Two processes race on the download lock with a slow stand-in for torchvision's download (no
network here). The ImageNet-style tests use tiny class folders of PIL-written images plus damaged files: random
bytes, a JPEG cut to 60% of its bytes (its header intact: it passes the check at setup and fails only when decoded),
and a 12000x12000 PNG of 17 KB that would take 450 MB to decode.
"""

from __future__ import annotations

import builtins
import fcntl
import inspect
import logging
import multiprocessing
import os
import pickle
import resource
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lnrepro.data import cifar10
from lnrepro.data.cifar10 import FOLDER, LOCK_FILE, TEST_FILES, TRAIN_FILES, CIFAR10DataModule, load_batch
from lnrepro.errors import UserInputError
from tests.conftest import CONF, SHARED_CIFAR10, write_fake_cifar10
from tests.test_data import cifar

ALL_FILES = (*TRAIN_FILES, *TEST_FILES, "batches.meta")


def assert_same(loaded, reference) -> None:
    """Equal values of equal types, all the way down (numpy arrays: dtype, shape and every element)."""
    assert type(loaded) is type(reference)
    if isinstance(reference, dict):
        assert list(loaded) == list(reference)
        for key in reference:
            assert_same(loaded[key], reference[key])
    elif isinstance(reference, list):
        assert len(loaded) == len(reference)
        for a, b in zip(loaded, reference):
            assert_same(a, b)
    elif isinstance(reference, np.ndarray):
        assert loaded.dtype == reference.dtype and loaded.shape == reference.shape
        assert np.array_equal(loaded, reference)
    else:
        assert loaded == reference


def plain_pickle_load(path: Path):
    """How the batch files were read before: the reference for what they contain."""
    with open(path, "rb") as file:
        return pickle.load(file, encoding="latin1")


# --------------------------------------------------------------------------------------------------------------------
# CIFAR-10 batch files are never code
# --------------------------------------------------------------------------------------------------------------------


class Payload:
    """Pickles as a call of `function(argument)`: what a crafted batch file would contain."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def payloads(marker: Path) -> dict[str, Payload]:
    """Each payload creates `marker` when unpickled."""
    return {
        "os.system": Payload(os.system, f"touch '{marker}'"),
        "exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
    }


@pytest.mark.parametrize("kind", ["os.system", "exec"])
def test_crafted_batch_file_is_refused_without_running_it(fake_cifar10, tmp_path, kind):
    marker, control = tmp_path / "pwned", tmp_path / "control"
    payload = payloads(marker)[kind]
    # Hidden where a batch has plain data, in a file otherwise shaped like one.
    entry = plain_pickle_load(fake_cifar10 / FOLDER / "data_batch_2")
    entry["labels"] = [payload] + entry["labels"][1:]
    path = fake_cifar10 / FOLDER / "data_batch_2"
    path.write_bytes(pickle.dumps(entry))

    # The payload works: plain unpickling of the same bytes does create its marker.
    pickle.loads(pickle.dumps(payloads(control)[kind]))
    assert control.exists()

    with pytest.raises(UserInputError) as error:
        cifar(fake_cifar10, verify_checksums=False)
    message = str(error.value)
    assert not marker.exists()
    name = f"{payload.function.__module__}.{payload.function.__name__}"  # posix.system, builtins.exec
    assert str(path) in message and name in message and "is not a CIFAR-10 batch" in message
    assert "\n" not in message


def test_refused_global_in_the_test_file_and_the_meta_file(fake_cifar10, tmp_path):
    marker = tmp_path / "pwned"
    for name in ("test_batch", "batches.meta"):
        path = fake_cifar10 / FOLDER / name
        path.write_bytes(pickle.dumps({"labels": payloads(marker)["os.system"]}))
        with pytest.raises(UserInputError, match=r"is not a CIFAR-10 batch: it asks to load the global posix\.system"):
            load_batch(path)
    with pytest.raises(UserInputError, match="test_batch is not a CIFAR-10 batch"):
        cifar(fake_cifar10)
    assert not marker.exists()


def test_fake_batch_files_load_as_pickle_loads_them(fake_cifar10):
    for name in ALL_FILES:
        path = fake_cifar10 / FOLDER / name
        assert_same(load_batch(path), plain_pickle_load(path))


@pytest.mark.parametrize("protocol", [2, 5])
def test_batch_files_pickled_with_other_protocols_load(fake_cifar10, protocol):
    # Protocol 2 from Python 3 stores bytes through _codecs.encode; protocol 5 (Python 3.14's default) stores
    # arrays through numpy's _frombuffer.
    for name in ALL_FILES:
        path = fake_cifar10 / FOLDER / name
        reference = plain_pickle_load(path)
        path.write_bytes(pickle.dumps(reference, protocol=protocol))
        assert_same(load_batch(path), reference)
    assert len(cifar(fake_cifar10).train_set) == 150


@pytest.mark.skipif(not (SHARED_CIFAR10 / FOLDER).is_dir(), reason=f"{SHARED_CIFAR10} is absent")
@pytest.mark.parametrize("name", ["data_batch_1", "batches.meta"])
def test_real_batch_files_load_as_pickle_loads_them(name):
    path = SHARED_CIFAR10 / FOLDER / name
    loaded = load_batch(path)
    assert_same(loaded, plain_pickle_load(path))
    if name == "data_batch_1":
        assert loaded["data"].shape == (10_000, 3072) and loaded["data"].dtype == np.uint8


# --------------------------------------------------------------------------------------------------------------------
# Two runs downloading into one folder
# --------------------------------------------------------------------------------------------------------------------


def record(events: Path, line: str) -> None:
    with open(events, "a") as file:  # O_APPEND: whole lines from several processes
        file.write(f"{line}\n")


def slow_download(source: Path, events: Path):
    """Stands in for torchvision: copies `source`'s files in pieces, slowly, so that the race has time to happen."""

    def download(root) -> None:
        record(events, "start")
        folder = Path(root) / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        for name in ALL_FILES:
            data = (source / FOLDER / name).read_bytes()
            with open(folder / name, "wb") as file:
                for piece in (data[: len(data) // 2], data[len(data) // 2 :]):
                    file.write(piece)
                    file.flush()
                    time.sleep(0.03)
        record(events, "end")

    return download


def prepare_when_told(root: str, go, events: Path) -> None:
    go.wait()
    CIFAR10DataModule(root=root, download=True, pin_memory=False).prepare_data()
    record(events, "done")


def test_two_processes_downloading_into_one_folder(tmp_path, monkeypatch):
    source = write_fake_cifar10(tmp_path / "source")
    root, events = tmp_path / "shared-root", tmp_path / "events"
    monkeypatch.setattr(cifar10, "download", slow_download(source, events))
    context = multiprocessing.get_context("fork")  # the children inherit the stand-in download
    go = context.Event()
    runs = [context.Process(target=prepare_when_told, args=(str(root), go, events)) for _ in range(2)]
    for run in runs:
        run.start()
    go.set()  # both enter prepare_data together
    for run in runs:
        run.join(60)
    assert [run.exitcode for run in runs] == [0, 0]

    # One download; the other run waited for it to end, then found the files.
    assert events.read_text().split() == ["start", "end", "done", "done"]
    for name in ALL_FILES:
        assert (root / FOLDER / name).read_bytes() == (source / FOLDER / name).read_bytes()
    downloaded, original = cifar(root), cifar(source)
    assert torch.equal(downloaded.train_set.images, original.train_set.images)
    assert torch.equal(downloaded.test_set.labels, original.test_set.labels)


def test_a_failed_download_releases_the_lock(tmp_path, monkeypatch):
    def offline(root):
        raise UserInputError(f"CIFAR-10 is not in data.root={root} and downloading it failed")

    monkeypatch.setattr(cifar10, "download", offline)
    root = tmp_path / "cifar10"
    for _ in range(2):  # the second attempt fails the same way instead of waiting forever
        with pytest.raises(UserInputError, match="downloading it failed"):
            CIFAR10DataModule(root=str(root), download=True, pin_memory=False).prepare_data()
    with open(root / LOCK_FILE, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if still held


def test_complete_folder_gets_no_lock_file(fake_cifar10, monkeypatch):
    # data.download=true on a complete copy (maybe a shared, read-only one) writes nothing into it.
    monkeypatch.setattr(cifar10, "download", lambda root: pytest.fail("the files are there: nothing to download"))
    assert len(cifar(fake_cifar10, download=True).train_set) == 150
    assert not (fake_cifar10 / LOCK_FILE).exists()


def test_download_lock_is_skipped_where_it_cannot_be_opened(fake_cifar10, monkeypatch):
    # Stands for a folder this process cannot write to (the tests may run as root, who can write anywhere).
    (fake_cifar10 / LOCK_FILE).mkdir()
    monkeypatch.setattr(cifar10, "download", lambda root: pytest.fail("the files are there: nothing to download"))
    assert len(cifar(fake_cifar10, download=True).train_set) == 150


def test_a_completed_download_leaves_a_lock_that_later_runs_take(fake_cifar10, monkeypatch):
    # A lock file from an earlier download: the files are checked under the lock, which a read-only open can take.
    (fake_cifar10 / LOCK_FILE).touch()
    taken = []
    monkeypatch.setattr(cifar10.fcntl, "flock", lambda file, operation: taken.append(operation))
    assert len(cifar(fake_cifar10, download=True).train_set) == 150
    assert taken and taken[0] & fcntl.LOCK_EX


# --------------------------------------------------------------------------------------------------------------------
# ImageNet-style folders with unreadable images
# --------------------------------------------------------------------------------------------------------------------

CLASSES = ("n01", "n02")


@pytest.fixture
def small_tree(tmp_path) -> Path:
    """2 classes x 4 images in train/, 2 x 2 in val/: JPEGs and PNGs (24x20)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "imagenet"
    for split, count in (("train", 4), ("val", 2)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
                if i % 2:
                    image.save(folder / f"{name}_{i}.png")
                else:
                    image.save(folder / f"{name}_{i}.JPEG", quality=90)
    return root


def garbage(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return path


def imagefolder(root: Path, **overrides):
    """test_data's folder data module, at this file's smaller tree (2 classes, 16-pixel crops)."""
    from tests.test_data import imagefolder as imagefolder_of_test_data

    return imagefolder_of_test_data(
        root,
        **{**dict(batch_size=2, val_size=2, train_crop=16, eval_resize=18, eval_crop=16, num_classes=2), **overrides},
    )


def test_unreadable_image_is_named_in_one_line(small_tree):
    bad = garbage(small_tree / "train" / "n02" / "n02_9.JPEG")
    with pytest.raises(UserInputError) as error:
        imagefolder(small_tree).setup()
    message = str(error.value)
    assert str(bad) in message and "not a readable image" in message and "data.skip_unreadable=true" in message
    assert "\n" not in message


def test_skip_unreadable_leaves_them_out_with_one_warning(small_tree, caplog):
    bad = [garbage(small_tree / "train" / "n02" / "n02_9.JPEG"), garbage(small_tree / "val" / "n01" / "n01_9.JPEG")]
    datamodule = imagefolder(small_tree, skip_unreadable=True)
    with caplog.at_level(logging.WARNING, logger="lnrepro"):
        datamodule.setup()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "left out 2 unreadable image(s)" in warnings[0], warnings

    train_view, eval_view = datamodule.train_set.dataset, datamodule.val_set.dataset
    assert len(train_view) == 8 and len(datamodule.test_set) == 4  # the valid images, all of them
    assert train_view.samples == eval_view.samples  # the hold-out indexes both views alike
    for view in (train_view, datamodule.test_set.dataset):
        paths = {path for path, _ in view.samples}
        assert not paths & {str(path) for path in bad}
        assert view.targets == [target for _, target in view.samples] and view.imgs == view.samples
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader(), datamodule.test_dataloader()):
        for images, _labels in loader:
            assert images.shape[1:] == (3, 16, 16) and torch.isfinite(images).all()


def truncate(path: Path, keep: float = 0.6) -> Path:
    """Cut `path` to `keep` of its bytes: the header stays whole, the pixel data stops short."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.fixture(scope="session")
def huge_png(tmp_path_factory) -> Path:
    """12000x12000 pixels (144 Mpx, above PIL's warning limit, below its error limit) in 17 KB."""
    from PIL import Image

    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("1", (12000, 12000)).save(path, optimize=True)
    return path


@pytest.fixture
def decodes(monkeypatch) -> list[tuple[int, int]]:
    """The size of every image PIL decodes from here on (`ImageFile.load` is where pixel data is read)."""
    from PIL import ImageFile

    sizes, load = [], ImageFile.ImageFile.load

    def recording_load(image):
        sizes.append(image.size)
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    return sizes


def one_pass(loader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    assert all(len(images) == loader.batch_size for images, _ in batches[:-1]), "batches keep their size"
    return torch.cat([images for images, _ in batches]), torch.cat([labels for _, labels in batches])


def skip_warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "failed to decode" in r.getMessage()
    ]


def test_truncated_jpeg_passes_the_header_check_and_fails_when_decoded(small_tree, monkeypatch):
    from PIL import ImageFile

    from lnrepro.data.imagenet import UnreadableImageError, image_problem, load_rgb

    path = truncate(small_tree / "train" / "n01" / "n01_0.JPEG")
    assert image_problem(str(path)) is None  # the header is whole: setup cannot tell
    # Some libraries switch PIL to padding truncated files with grey: here it is an error all the same.
    for padding in (False, True):
        monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", padding)
        with pytest.raises(UnreadableImageError) as error:
            load_rgb(str(path))
        message = str(error.value)
        assert message.startswith(f"{path} could not be decoded") and "truncated" in message
        assert "data.skip_unreadable=true" in message and "\n" not in message
        assert ImageFile.LOAD_TRUNCATED_IMAGES is padding  # the process-wide setting is left as it was


@pytest.mark.parametrize("workers", [0, 1])
def test_image_that_fails_to_decode_is_one_line_naming_the_option(small_tree, workers):
    # A header that opens, data that stops: passes the check in setup, fails when it is decoded (in a worker with
    # num_workers=1, whose exception the DataLoader re-raises with the worker's traceback in its message).
    path = truncate(small_tree / "val" / "n01" / "n01_0.JPEG")
    datamodule = imagefolder(small_tree, num_workers=workers, persistent_workers=False)
    datamodule.setup()
    with pytest.raises(UserInputError) as error:
        list(datamodule.test_dataloader())
    message = str(error.value)
    assert message.startswith(f"{path} could not be decoded") and "delete or replace it" in message
    assert "data.skip_unreadable=true" in message
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("workers", [0, 1])
def test_skip_unreadable_skips_and_counts_images_that_fail_to_decode(small_tree, caplog, workers):
    datamodule = imagefolder(small_tree, skip_unreadable=True, num_workers=workers, persistent_workers=False)
    datamodule.setup()
    train, test = datamodule.train_set, datamodule.test_set
    # Cut short after setup checked them: one training image and the first test image.
    train_path = truncate(Path(train.dataset.samples[train.indices[1]][0]))
    test_path = truncate(Path(test.dataset.samples[0][0]))

    with caplog.at_level(logging.WARNING, logger="lnrepro"):
        for _ in range(2):  # two epochs: counted in each
            images, labels = one_pass(datamodule.train_dataloader())
            assert images.shape == (len(train), 3, 16, 16) and torch.isfinite(images).all()
        images, labels = one_pass(datamodule.test_dataloader())
        one_pass(datamodule.val_dataloader())
    warned = skip_warnings(caplog)
    assert len(warned) == 3, warned  # one line per pass that skipped something
    assert all("1 image(s) of the train split" in line and str(train_path) in line for line in warned[:2])
    assert "1 image(s) of the test split" in warned[2] and str(test_path) in warned[2]
    assert datamodule.unreadable_skipped == {"train": 2, "val": 0, "test": 1}

    # The damaged test image is replaced by the next image of the split (evaluation transforms are deterministic).
    assert len(images) == len(test) and labels.tolist() == [test.dataset.targets[1], *test.dataset.targets[1:]]
    torch.testing.assert_close(images[0], images[1])


def test_replacement_is_the_next_image_of_the_same_split(small_tree):
    # The same replacement on every run (a resumed one too), and never a held-out image in training.
    datamodule = imagefolder(small_tree, skip_unreadable=True)
    datamodule.setup()
    train = datamodule.train_set
    last = truncate(Path(train.dataset.samples[train.indices[-1]][0]))
    _, label = train[len(train) - 1]  # wraps around to the first training image
    assert label == train.dataset.targets[train.indices[0]]
    assert str(last) not in {train.dataset.samples[i][0] for i in datamodule.val_set.indices}


def test_an_image_above_max_pixels_at_load_time_is_refused_or_skipped(small_tree, caplog):
    from PIL import Image

    for skip in (False, True):
        datamodule = imagefolder(small_tree, skip_unreadable=skip, max_pixels=24 * 20)  # the tree's images: 24x20
        datamodule.setup()
        path = Path(datamodule.test_set.dataset.samples[0][0])
        Image.new("RGB", (25, 20)).save(path, format="JPEG" if path.suffix == ".JPEG" else "PNG")  # after setup
        if not skip:
            with pytest.raises(UserInputError) as error:
                list(datamodule.test_dataloader())
            message = str(error.value)
            assert message.startswith(f"{path} is 25x20 = 500 pixels, above data.max_pixels=480"), message
            assert "data.skip_unreadable=true" in message and "\n" not in message
        else:
            with caplog.at_level(logging.WARNING, logger="lnrepro"):
                one_pass(datamodule.test_dataloader())
            assert datamodule.unreadable_skipped["test"] == 1 and str(path) in skip_warnings(caplog)[0]


def test_a_huge_image_is_refused_from_its_header_without_decoding(small_tree, huge_png, decodes):
    from lnrepro.data.imagenet import UnreadableImageError, load_rgb

    path = small_tree / "train" / "n01" / "n01_huge.png"
    path.write_bytes(huge_png.read_bytes())
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UserInputError) as at_setup:
            imagefolder(small_tree).setup()
    assert not [w for w in caught if "decompression bomb" in str(w.message)]  # refused here, not warned about by PIL
    with pytest.raises(UnreadableImageError) as at_load:  # the file was swapped in after setup
        load_rgb(str(path))
    assert (12000, 12000) not in decodes  # nothing but the header was read
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100 * 1024  # decoding: 450 MB
    load_rgb(str(small_tree / "train" / "n01" / "n01_1.png"))
    assert decodes[-1] == (24, 20)  # the record sees decoding where there is some
    size = "12000x12000 = 144000000 pixels, above data.max_pixels=89478485"
    for message in (str(at_setup.value), str(at_load.value)):
        assert str(path) in message and size in message and "data.skip_unreadable=true" in message
        assert "\n" not in message


def test_skip_unreadable_leaves_a_huge_image_out_at_setup(small_tree, huge_png, decodes, caplog):
    path = small_tree / "train" / "n02" / "n02_huge.png"
    path.write_bytes(huge_png.read_bytes())
    datamodule = imagefolder(small_tree, skip_unreadable=True)
    with caplog.at_level(logging.WARNING, logger="lnrepro"):
        datamodule.setup()
    assert "left out 1 unreadable image(s)" in caplog.text and str(path) in caplog.text
    assert str(path) not in {p for p, _ in datamodule.train_set.dataset.samples}
    assert (12000, 12000) not in decodes


@pytest.mark.parametrize("value", [0, -1, 1.5, "1e6", True, 2 * 89_478_485 + 1])
def test_max_pixels_is_checked_before_any_data_is_read(tmp_path, value):
    with pytest.raises(UserInputError) as error:
        imagefolder(tmp_path / "no-such-folder", max_pixels=value)  # refused before the folder is looked at
    message = str(error.value)
    assert message.startswith(f"data.max_pixels={value!r}") and "\n" not in message


def test_max_pixels_accepts_null_and_positive_integers(small_tree):
    for value in (None, 1_000_000):
        datamodule = imagefolder(small_tree, max_pixels=value)
        datamodule.setup()
        assert len(datamodule.train_set) == 6


def test_skip_unreadable_is_configured_off_and_max_pixels_to_pils_limit():
    from PIL import Image

    from lnrepro.data.imagenet import ImageFolderDataModule

    config = OmegaConf.load(CONF / "data" / "imagenet.yaml")
    parameters = inspect.signature(ImageFolderDataModule).parameters
    assert config.skip_unreadable is False and parameters["skip_unreadable"].default is False
    assert config.max_pixels == parameters["max_pixels"].default == Image.MAX_IMAGE_PIXELS


# --------------------------------------------------------------------------------------------------------------------
# A short training on folders with a truncated JPEG
# --------------------------------------------------------------------------------------------------------------------


def folder_training(tree: Path, *overrides: str) -> list[str]:
    return [
        "data=imagenet",
        f"data.root={tree}",
        "data.num_classes=2",
        "data.val_size=2",
        "data.batch_size=2",
        "data.train_crop=32",
        "data.eval_resize=36",
        "data.eval_crop=32",
        "data.image_size=32",
        "data.pin_memory=false",
        "data.persistent_workers=false",
        "model=mobilenet_v1",
        "model.width=0.25",
        *overrides,
    ]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("workers", [0, 1])
def test_training_stops_in_one_line_at_a_truncated_jpeg(small_tree, tmp_path, capsys, workers):
    from tests.conftest import FAST, NO_PROGRESS_BAR
    from tests.test_cli import refused_in_process

    path = truncate(small_tree / "train" / "n01" / "n01_2.JPEG")
    line = refused_in_process(
        capsys, tmp_path, FAST + NO_PROGRESS_BAR + folder_training(small_tree, f"data.num_workers={workers}")
    )
    assert line.startswith(f"error: {path} could not be decoded") and "data.skip_unreadable=true" in line


@pytest.mark.usefixtures("one_thread")
def test_training_skips_and_counts_truncated_jpegs(small_tree, make_train_cfg, caplog):
    from lnrepro.tasks import train

    paths = [truncate(small_tree / "train" / "n01" / "n01_2.JPEG"), truncate(small_tree / "val" / "n02" / "n02_0.JPEG")]
    cfg = make_train_cfg(*folder_training(small_tree, "data.num_workers=0", "data.skip_unreadable=true"))
    with caplog.at_level(logging.WARNING, logger="lnrepro"):
        metrics = train(cfg)
    assert 0 <= metrics["test/acc"] <= 1 and metrics["global_step"] == 3  # every batch of the epoch, full
    warned = skip_warnings(caplog)
    for path in paths:
        assert any(str(path) in line for line in warned), warned
    assert any("of the test split" in line for line in warned)
