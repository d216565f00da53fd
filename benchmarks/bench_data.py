"""Images/s of this project's CIFAR-10 training pipeline beside torchvision's usual one, in one run.

    python benchmarks/bench_data.py                                  # ../shared/data/cifar10, 100 batches of 128
    python benchmarks/bench_data.py --root data/cifar10 --batches 200 --device cuda

Both pipelines deliver the same thing: a shuffled training batch of 128 float32 images, randomly cropped from the
4-pixel zero-padded image, randomly flipped, normalised, on `--device`.

- lnrepro: `CIFAR10DataModule.train_dataloader()` (uint8 tensors in memory, one tensor index per batch), the batch
  moved to the device, then `augment_and_normalize(..., training=True)` there: what Lightning runs in
  `on_after_batch_transfer`.
- torchvision: `CIFAR10(root, train=True, transform=Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(),
  ToTensor(), Normalize(mean, std)]))` + `DataLoader(batch_size=128, shuffle=True, num_workers=2)`, the batch moved
  to the device: per-image PIL work in worker processes.

Each pipeline first serves `--warmup` batches (worker start-up, first allocations: not timed), then the clock runs
over the next `--batches` batches (the same number of images for both). The two are timed alternately `--repeats`
times so that a change of machine load hits both; the table shows the median.
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lnrepro.data.cifar10 import FOLDER, MEAN, STD, CIFAR10DataModule  # noqa: E402
from lnrepro.profiling import synchronize  # noqa: E402


def time_batches(batches, count: int, warmup: int, step, device: torch.device) -> tuple[int, float]:
    """Serve `warmup` batches untimed, then time `count` more; returns (images, seconds)."""
    iterator = iter(batches)
    for _ in range(warmup):
        step(next(iterator))
    synchronize(device)
    images = 0
    start = time.perf_counter()
    for _ in range(count):
        images += step(next(iterator))
    synchronize(device)
    return images, time.perf_counter() - start


def endless(make_loader):
    """Batches from successive epochs (the loader is rebuilt when an epoch ends)."""
    while True:
        yield from make_loader()


def bench_lnrepro(datamodule: CIFAR10DataModule, args, device: torch.device) -> tuple[int, float]:
    loader = datamodule.train_dataloader()
    epoch = iter(range(1_000_000))

    def epochs():
        loader.sampler.set_epoch(next(epoch))  # what Lightning does before each epoch
        return loader

    def step(batch) -> int:
        images, labels = batch
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        out = datamodule.augment_and_normalize(images, training=True)
        assert out.dtype == torch.float32 and out.shape[1:] == (3, 32, 32)
        return len(out)

    return time_batches(endless(epochs), args.batches, args.warmup, step, device)


def torchvision_dataset(root: Path):
    from torchvision import transforms
    from torchvision.datasets import CIFAR10

    class UncheckedCIFAR10(CIFAR10):
        """torchvision's CIFAR10, loading and serving exactly as usual, minus the md5 checks of the files.

        The shared copy is re-packed (same layout and pickle format, other bytes), so the official checksums do not
        match and the stock class refuses to construct. The checks run once in the constructor and are not part of
        the per-image work being measured; lnrepro loads the same files with data.verify_checksums=false.
        `_load_meta` is the stock one without its md5 check (the shared batches.meta happens to match, a copy made
        by tests/conftest.py's write_fake_cifar10 does not).
        """

        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as file:
                self.classes = pickle.load(file, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    return UncheckedCIFAR10(str(root), train=True, transform=transform, download=False)


def bench_torchvision(dataset, args, device: torch.device) -> tuple[int, float]:
    from torch.utils.data import DataLoader

    def loader():
        # A fresh loader (and workers) per repeat, as a training script gets per run; start-up is in the warm-up.
        return DataLoader(
            dataset,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
        )

    def step(batch) -> int:
        images, labels = batch
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 32)
        return len(images)

    return time_batches(endless(loader), args.batches, args.warmup, step, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO.parent / "shared" / "data" / "cifar10",
        help="folder holding cifar-10-batches-py/ (default: ../shared/data/cifar10)",
    )
    parser.add_argument("--batches", type=int, default=100, help="timed batches per pipeline and repeat")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches before the clock starts")
    parser.add_argument("--repeats", type=int, default=3, help="alternate the two pipelines this many times")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the torchvision pipeline")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads of the main process (default: torch's choice); torchvision's "
        "workers use one thread each whatever this says",
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    if not (args.root / FOLDER).is_dir():
        sys.exit(f"error: {args.root / FOLDER} does not exist; pass --root with the folder that holds '{FOLDER}'")

    import torchvision

    print("command:   python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:]))
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, python {platform.python_version()}")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"device:    {device} ({device_name}); torch threads {torch.get_num_threads()}; "
        f"CPU cores {os.cpu_count()}; load average {load:.2f} at start"
    )
    print(
        f"data:      {args.root}; batch {args.batch_size}; {args.warmup} warm-up + {args.batches} timed batches "
        f"({args.batches * args.batch_size:,} images) per pipeline, {args.repeats} alternating repeats"
    )

    start = time.perf_counter()
    datamodule = CIFAR10DataModule(
        root=str(args.root),
        download=False,
        verify_checksums=False,
        batch_size=args.batch_size,
        num_workers=0,
        pin_memory=True,
    )
    import logging

    logging.getLogger("lnrepro").setLevel(logging.ERROR)  # the verify_checksums=false warning is expected here
    datamodule.setup()
    ours_load = time.perf_counter() - start
    start = time.perf_counter()
    dataset = torchvision_dataset(args.root)
    theirs_load = time.perf_counter() - start

    ours, theirs = [], []
    for _ in range(args.repeats):
        images, seconds = bench_lnrepro(datamodule, args, device)
        ours.append(images / seconds)
        images_tv, seconds = bench_torchvision(dataset, args, device)
        assert images_tv == images
        theirs.append(images_tv / seconds)

    ours_label = f"lnrepro: in-memory uint8 + batch crop/flip/normalise on {device.type}"
    theirs_label = f"torchvision: CIFAR10 + transforms + DataLoader(num_workers={args.workers})"
    width = max(len(ours_label), len(theirs_label))
    print()
    print(f"{'pipeline':<{width}}  {'load s':>7}  {'images/s (median)':>17}  per repeat")
    for label, load_s, rates in ((ours_label, ours_load, ours), (theirs_label, theirs_load, theirs)):
        print(
            f"{label:<{width}}  {load_s:>7.2f}  {statistics.median(rates):>17,.0f}  "
            + ", ".join(f"{r:,.0f}" for r in rates)
        )
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(f"{'ratio lnrepro / torchvision':<{width}}  {'':>7}  {ratio:>16.1f}x")


if __name__ == "__main__":
    main()
