"""How much does another busy process distort batch-1 latency, per runtime? Quiet and loaded, side by side.

    python benchmarks/bench_contention.py                                  # mobilenet_v1, 32x32, 2 threads, 1 hog
    python benchmarks/bench_contention.py --model shufflenet_v2 --threads 1 --hogs 1
    python benchmarks/bench_contention.py --runtimes eager compiled --rounds 3 --runs 30

Why it exists: in a profile multirun that shared the CPU with test suites, compiled MobileNet V1/V2 at 32x32
once timed 728-1003 ms at batch 1 where eager took 7-9 ms (quiet: 4.6 ms). One suspect was inductor's per-kernel
OpenMP barriers waiting for a descheduled thread. On 2026-11-30 (docs/RESULTS.md) 1, 2 and 4 busy-looping
processes slowed eager, compiled and ONNX Runtime alike (2.2-4.4x on the median, far more on p90), and lnrepro's
contended flag caught every loaded measurement: the outlier did not come back, and the flag is what guards a table
against it.

Each runtime is prepared once (compiled once, exported once), then timed in `--rounds` alternating pairs: quiet,
then with `--hogs` busy-looping processes started just before and stopped just after. Printed per runtime: the
median and p90 of all quiet passes and of all loaded passes, the loaded/quiet ratio of the medians, and whether
lnrepro's `contended` flag (p90/median > 1.5 or CPU pressure > 10%) caught the loaded measurement.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lnrepro.models import build_model
from lnrepro.profiling.context import percentile
from lnrepro.profiling.cpu import contended, cpu_features, cpu_pressure
from lnrepro.profiling.runtimes import prepare
from lnrepro.profiling.timing import time_calls
from lnrepro.schema import RUNTIMES


def _spin() -> None:
    while True:
        pass


def _timed_ms(runner, image: torch.Tensor, runs: int, warmup: int) -> list[float]:
    return [1000 * s for s in time_calls(lambda: runner(image), image.device, runs, warmup)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mobilenet_v1")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--runtimes", nargs="+", default=["eager", "compiled", "onnxruntime"], choices=RUNTIMES)
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    parser.add_argument("--hogs", type=int, default=1, help="busy-looping processes in the loaded arm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=30, help="timed batch-1 passes per arm and round")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    stem = "cifar" if args.image_size <= 64 else "imagenet"
    model = build_model(args.model, width=args.width, num_classes=10 if stem == "cifar" else 1000, stem=stem).eval()
    size = (3, args.image_size, args.image_size)
    image = torch.randn(1, *size)
    calibration = torch.randn(8, *size)
    print(
        f"{args.model} {args.width}x at {args.image_size}x{args.image_size}, batch 1, {args.threads} threads, "
        f"{args.hogs} hog(s); {cpu_features().get('model')}; {args.rounds} rounds x {args.runs} passes per arm"
    )

    rows = []
    for runtime in args.runtimes:
        runner = prepare(runtime, model, size, calibration=calibration)
        runner(image)  # compiles / initialises outside the timing
        quiet, loaded, pressures = [], [], []
        for _ in range(args.rounds):
            quiet += _timed_ms(runner, image, args.runs, args.warmup)
            hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.hogs)]
            for hog in hogs:
                hog.start()
            time.sleep(0.5)  # let the scheduler see the hogs before timing starts
            try:
                loaded += _timed_ms(runner, image, args.runs, args.warmup)
                pressures.append(cpu_pressure())
            finally:
                for hog in hogs:
                    hog.terminate()
                    hog.join()
            time.sleep(0.5)
        q50, q90, l50, l90 = (
            percentile(quiet, 50),
            percentile(quiet, 90),
            percentile(loaded, 50),
            percentile(loaded, 90),
        )
        pressure = max((p for p in pressures if p is not None), default=None)
        rows.append((runtime, q50, q90, l50, l90, l50 / q50, contended(l50, l90, pressure)))

    print(f"{'runtime':<18}{'quiet ms (p90)':>18}{'loaded ms (p90)':>20}{'loaded/quiet':>14}{'flagged':>9}")
    for runtime, q50, q90, l50, l90, ratio, flagged in rows:
        print(
            f"{runtime:<18}{f'{q50:.2f} ({q90:.2f})':>18}{f'{l50:.2f} ({l90:.2f})':>20}{ratio:>14.1f}"
            f"{'yes' if flagged else 'no':>9}"
        )


if __name__ == "__main__":
    main()
