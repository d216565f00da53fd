"""Does the EfficiencyProfile callback slow training? Training images/s with and without it, in one run.

    python benchmarks/bench_profile_overhead.py                                   # shufflenet_v2 0.5x, 32x32
    python benchmarks/bench_profile_overhead.py --model mobilenet_v2 --width 0.5 --batch 64 --epochs 3 --repeats 7
    python benchmarks/bench_profile_overhead.py --train-size 256 --repeats 3       # a quick smoke run

Each repeat fits a fresh network (same seed) on the same random in-memory data twice, once with the callback
(its per-step and per-epoch hooks, the fit-start counts; the end-of-fit latency/memory measurement is off since it
runs after training) and once without; the order alternates from repeat to repeat so that a change of machine load
hits both arms. The same neutral timer measures both: images of every training step after `--warmup` steps,
over the time from the end of the warm-up to the end of the last epoch (validation off, no logger, no
checkpoint). Printed: each arm's median images/s and ratio = with / without (the target is at least 0.97), and
the median wall time of the whole fit (this one includes the callback's one-off fit-start count).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lnrepro.callbacks import EfficiencyProfile  # noqa: E402
from lnrepro.models import build_model  # noqa: E402
from lnrepro.profiling import synchronize  # noqa: E402
from lnrepro.training import ClassificationModule  # noqa: E402


class StepTimer(pl.Callback):
    """Images/s of the training steps after the first `warmup` ones (all epochs), the same in both arms."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.steps, self.images, self.start, self.seconds = warmup, 0, 0, None, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps += 1
        if self.start is not None:
            self.images += len(batch[0])
        elif self.steps >= self.warmup:
            synchronize(pl_module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        synchronize(pl_module.device)
        self.seconds = time.perf_counter() - self.start if self.start is not None else 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def fit_once(args, data: TensorDataset, with_profile: bool) -> tuple[float, float]:
    pl.seed_everything(args.seed, verbose=False)
    net = build_model(args.model, width=args.width, num_classes=args.num_classes, stem=args.stem)
    module = ClassificationModule(net=net, optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
                                  scheduler=None, num_classes=args.num_classes)
    timer = StepTimer(args.warmup)
    callbacks = [timer] + ([EfficiencyProfile(image_size=args.resolution, warmup_steps=args.warmup,
                                              measure_at_end=False)] if with_profile else [])
    trainer = pl.Trainer(accelerator=args.device, devices=1, max_epochs=args.epochs, callbacks=callbacks,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=0)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return timer.images_per_s, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shufflenet_v2")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--stem", default="cifar")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=1024, help="random images per epoch")
    parser.add_argument("--warmup", type=int, default=3, help="training steps left out of images/s")
    parser.add_argument("--repeats", type=int, default=5, help="fits per arm (alternating order)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(args.seed)
    data = TensorDataset(torch.randn(args.train_size, 3, args.resolution, args.resolution, generator=generator),
                         torch.randint(0, args.num_classes, (args.train_size,), generator=generator))
    print(f"{args.model} {args.width}x, {args.resolution}x{args.resolution}, batch {args.batch}, "
          f"{args.train_size // args.batch} steps x {args.epochs} epochs, {args.repeats} repeats per arm, "
          f"{args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    rates: dict[bool, list[float]] = {True: [], False: []}
    walls: dict[bool, list[float]] = {True: [], False: []}
    for repeat in range(args.repeats):
        for with_profile in ((False, True) if repeat % 2 == 0 else (True, False)):
            rate, wall = fit_once(args, data, with_profile)
            rates[with_profile].append(rate)
            walls[with_profile].append(wall)
            print(f"  repeat {repeat}: {'with   ' if with_profile else 'without'} {rate:8.1f} img/s  "
                  f"fit {wall:6.2f} s", flush=True)
    without, with_ = statistics.median(rates[False]), statistics.median(rates[True])
    ratio = with_ / without
    print(f"{'':10}{'img/s (median)':>16}{'fit s (median)':>16}")
    print(f"{'without':10}{without:16.1f}{statistics.median(walls[False]):16.2f}")
    print(f"{'with':10}{with_:16.1f}{statistics.median(walls[True]):16.2f}")
    verdict = "within 3%" if ratio >= 0.97 else "MORE than 3% slower"
    print(f"ratio with/without: {ratio:.3f} ({verdict})")


if __name__ == "__main__":
    main()
