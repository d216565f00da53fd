"""Does the EfficiencyProfile callback slow training? Training images/s with and without it, in one run.

    python benchmarks/bench_profile_overhead.py                                   # shufflenet_v2 0.5x, 32x32
    python benchmarks/bench_profile_overhead.py --model mobilenet_v2 --width 0.5 --batch 64 --epochs 3 --repeats 7
    python benchmarks/bench_profile_overhead.py --train-size 256 --repeats 3       # a quick smoke run

Each repeat fits a fresh network (same seed) on the same random in-memory data twice, once with the callback
(its per-step and per-epoch hooks, the fit-start counts; the end-of-fit latency/memory measurement is off since it
runs after training) and once without; the order alternates from repeat to repeat so that a change of machine load
hits both arms. The same neutral timer measures both: images of every training step after `--warmup` steps,
over the time from the end of the warm-up to the end of the last epoch (validation off, no logger, no
checkpoint). Printed, with / without (the target is at least 0.97): the ratio of each arm's median images/s over
all steps, the ratio of each arm's median step time (robust to the odd step slowed by another process), and the
ratio within each repeat (back-to-back fits, robust to slow drifts of the machine's load), whose median gives the
verdict; also the median wall time of the whole fit (this one includes the callback's one-off fit-start count).
On a shared machine the two arms' difference drowns in noise, so the callback's own cost is also clocked directly:
the seconds spent inside its hooks (per step and in all), as a share of the step and of the fit. Last, one fit
(`--interleaved-epochs`) runs the callback's per-step hooks on one step of every pair of adjacent steps and prints
the images/s ratio with / without over the pairs: the side-by-side comparison at the finest grain.
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import statistics
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lnrepro.callbacks import EfficiencyProfile
from lnrepro.models import build_model
from lnrepro.profiling import synchronize
from lnrepro.training import ClassificationModule


class StepTimer(pl.Callback):
    """Images/s of the training steps after the first `warmup` ones (all epochs), the same in both arms; also
    every step's interval (batch end to batch end, so all hooks of both callbacks are inside it), whose median
    ignores the odd step slowed by another process on a shared machine."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.steps, self.images, self.start, self.seconds = warmup, 0, 0, None, 0.0
        self.batch_size, self.step_seconds, self._last = 0, [], None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps += 1
        if self.start is not None:
            synchronize(pl_module.device)
            now = time.perf_counter()
            self.images += len(batch[0])
            self.batch_size = len(batch[0])
            self.step_seconds.append(now - self._last)
            self._last = now
        elif self.steps >= self.warmup:
            synchronize(pl_module.device)
            self.start = self._last = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._last is not None:  # the epoch boundary (sampler, hooks) is outside the step intervals
            synchronize(pl_module.device)
            self._last = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        synchronize(pl_module.device)
        self.seconds = time.perf_counter() - self.start if self.start is not None else 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    @property
    def median_step_images_per_s(self) -> float:
        return self.batch_size / statistics.median(self.step_seconds) if self.step_seconds else float("nan")


PER_STEP_HOOKS = ("on_train_batch_start", "on_train_batch_end")


def overridden_hooks(callback: pl.Callback) -> list[str]:
    """The `on_*` hooks the callback's class defines itself (Lightning's defaults do nothing)."""
    return [
        name
        for name in dir(type(callback))
        if name.startswith("on_") and getattr(type(callback), name) is not getattr(pl.Callback, name, None)
    ]


class HookClock:
    """Seconds spent inside a callback's hooks, per hook, measured in the run itself (the callback's own cost,
    which, unlike the difference of two runs, does not drown in the machine's noise)."""

    def __init__(self, callback: pl.Callback) -> None:
        self.seconds: dict[str, float] = {}
        for name in overridden_hooks(callback):
            setattr(callback, name, self._timed(name, getattr(callback, name)))

    def _timed(self, name, hook):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

        return timed

    @property
    def per_step_seconds(self) -> float:
        return sum(self.seconds.get(name, 0.0) for name in PER_STEP_HOOKS)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


class EveryOtherStep(pl.Callback):
    """Runs `inner`'s per-step hooks on one step of each pair of training steps (which one: a seeded coin) and its
    other hooks always, and clocks every step (batch end to batch end, so the step's own hooks are inside) after
    `warmup` steps. The two steps of a pair run a fraction of a second apart under the same machine load, so
    their ratio isolates the per-step cost of the callback far below the noise between whole fits."""

    def __init__(self, inner: pl.Callback, warmup: int, seed: int = 0) -> None:
        self.inner, self.warmup, self.coin = inner, warmup, random.Random(seed)
        self.steps, self.last, self.timed, self.active = 0, None, False, False
        self.first_with = False
        self.pending: dict[bool, float] = {}  # the current pair: {with the hooks: seconds}
        self.pairs: list[dict[bool, float]] = []
        for name in overridden_hooks(inner):  # every other hook of the callback is forwarded as it is
            if name not in PER_STEP_HOOKS and name != "on_train_epoch_start":
                setattr(self, name, getattr(inner, name))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.inner.on_train_epoch_start(trainer, pl_module)
        self.last, self.pending = None, {}  # a pair never spans an epoch boundary

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.timed = self.last is not None and self.steps >= self.warmup
        if self.timed and not self.pending:
            self.first_with = self.coin.random() < 0.5
        self.active = self.timed and (self.first_with if not self.pending else not self.first_with)
        if self.active:
            self.inner.on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.active:
            self.inner.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        synchronize(pl_module.device)
        now = time.perf_counter()
        if self.timed:
            self.pending[self.active] = now - self.last
            if len(self.pending) == 2:
                self.pairs.append(self.pending)
                self.pending = {}
        self.last, self.steps = now, self.steps + 1

    def ratios(self) -> list[float]:
        """Per pair: images/s with the hooks over images/s without (= step time without / with)."""
        return [pair[False] / pair[True] for pair in self.pairs]


def median_interval(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """A distribution-free 95% confidence interval of the median: the order statistics of (1-based) ranks
    floor(n/2 - z sqrt(n)/2) and ceil(1 + n/2 + z sqrt(n)/2) (the normal approximation of the binomial)."""
    ordered, n = sorted(values), len(values)
    half_width = z * n**0.5 / 2
    low_rank = max(1, math.floor(n / 2 - half_width))
    high_rank = min(n, math.ceil(1 + n / 2 + half_width))
    return ordered[low_rank - 1], ordered[high_rank - 1]


def new_profile(args) -> EfficiencyProfile:
    # The end-of-fit latency/memory measurement runs after training: it cannot slow it, so it is off here.
    return EfficiencyProfile(image_size=args.resolution, warmup_steps=args.warmup, profile={"end_of_fit": False})


def fit(args, data: TensorDataset, callbacks: list[pl.Callback], epochs: int) -> float:
    """Fit a fresh network (same seed every time) on `data` with `callbacks` and nothing else (no validation,
    logger or checkpoint); returns the wall time of `trainer.fit`."""
    pl.seed_everything(args.seed, verbose=False)
    net = build_model(args.model, width=args.width, num_classes=args.num_classes, stem=args.stem)
    module = ClassificationModule(
        net=net,
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        scheduler=None,
        num_classes=args.num_classes,
    )
    trainer = pl.Trainer(
        accelerator=args.device,
        devices=1,
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=0)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return time.perf_counter() - start


def fit_interleaved(args, data: TensorDataset) -> EveryOtherStep:
    switch = EveryOtherStep(new_profile(args), args.warmup, args.seed)
    fit(args, data, [switch], args.interleaved_epochs)
    return switch


def fit_once(args, data: TensorDataset, with_profile: bool) -> tuple[float, float, float, HookClock | None]:
    timer = StepTimer(args.warmup)
    profile = new_profile(args) if with_profile else None
    clock = HookClock(profile) if profile else None
    wall = fit(args, data, [timer] + ([profile] if profile else []), args.epochs)
    return timer.images_per_s, timer.median_step_images_per_s, wall, clock


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
    parser.add_argument(
        "--interleaved-epochs",
        type=int,
        default=4,
        help="epochs of the fit whose steps alternate with and without the callback's hooks",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(args.seed)
    data = TensorDataset(
        torch.randn(args.train_size, 3, args.resolution, args.resolution, generator=generator),
        torch.randint(0, args.num_classes, (args.train_size,), generator=generator),
    )
    print(
        f"{args.model} {args.width}x, {args.resolution}x{args.resolution}, batch {args.batch}, "
        f"{args.train_size // args.batch} steps x {args.epochs} epochs, {args.repeats} repeats per arm, "
        f"{args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    rates: dict[bool, list[float]] = {True: [], False: []}
    step_rates: dict[bool, list[float]] = {True: [], False: []}
    walls: dict[bool, list[float]] = {True: [], False: []}
    clocks: list[HookClock] = []
    for repeat in range(args.repeats):
        for with_profile in (False, True) if repeat % 2 == 0 else (True, False):
            rate, step_rate, wall, clock = fit_once(args, data, with_profile)
            clocks += [clock] if clock else []
            rates[with_profile].append(rate)
            step_rates[with_profile].append(step_rate)
            walls[with_profile].append(wall)
            print(
                f"  repeat {repeat}: {'with   ' if with_profile else 'without'} {rate:8.1f} img/s  "
                f"median step {step_rate:8.1f} img/s  fit {wall:6.2f} s",
                flush=True,
            )
    median = statistics.median
    # Each repeat's two fits ran back to back, so their ratio cancels slow drifts of the machine's load.
    paired = [w / wo for w, wo in zip(step_rates[True], step_rates[False])]
    print(f"{'':10}{'img/s (median)':>16}{'median-step img/s':>19}{'fit s (median)':>16}")
    for name, arm in (("without", False), ("with", True)):
        print(f"{name:10}{median(rates[arm]):16.1f}{median(step_rates[arm]):19.1f}{median(walls[arm]):16.2f}")
    ratio = median(rates[True]) / median(rates[False])
    step_ratio = median(step_rates[True]) / median(step_rates[False])
    print(f"ratio with/without, images/s over all steps: {ratio:.3f}")
    print(f"ratio with/without, median step:              {step_ratio:.3f}")
    print(
        f"paired ratios per repeat (median step): {' '.join(f'{r:.3f}' for r in paired)}; median {median(paired):.3f}"
    )
    steps = args.train_size // args.batch * args.epochs
    per_step_us = median(c.per_step_seconds for c in clocks) / steps * 1e6
    step_us = 1e6 * args.batch / median(step_rates[True])
    share = median(c.total_seconds / wall for c, wall in zip(clocks, walls[True]))
    print(
        f"time inside the callback's hooks (median of the runs with it): per step {per_step_us:.1f} us "
        f"= {per_step_us / step_us:.4%} of a {step_us / 1000:.1f} ms step; all hooks, fit-start counts "
        f"included: {median(c.total_seconds for c in clocks) * 1000:.1f} ms = {share:.3%} of the fit"
    )
    slowest = max(clocks[0].seconds, key=lambda name: median(c.seconds.get(name, 0.0) for c in clocks))
    print(f"  largest: {slowest} {median(c.seconds.get(slowest, 0.0) for c in clocks) * 1000:.1f} ms per fit")
    if args.interleaved_epochs > 0:
        switch = fit_interleaved(args, data)
        pair_ratios = switch.ratios()
        with_s = median(pair[True] for pair in switch.pairs)
        without_s = median(pair[False] for pair in switch.pairs)
        low, high = median_interval(pair_ratios)
        print(
            f"steps interleaved in one fit ({len(pair_ratios)} pairs of adjacent steps, {args.interleaved_epochs} "
            f"epochs): median step with {with_s * 1000:.2f} ms, without {without_s * 1000:.2f} ms"
        )
        print(
            f"img/s ratio with/without, median over pairs: {median(pair_ratios):.4f} "
            f"(95% interval {low:.4f}-{high:.4f}); ratio of the medians {without_s / with_s:.4f}"
        )
        verdict = "within 3%" if low >= 0.97 else "NOT shown to be within 3%"
        print(f"verdict on the interval's lower end: {verdict}")
    else:
        verdict = "within 3%" if median(paired) >= 0.97 else "MORE than 3% slower"
        print(f"verdict on the median paired ratio of whole fits: {verdict}")


if __name__ == "__main__":
    main()
