"""Forward+backward time of each lnrepro network beside its torchvision/timm twin, in one run.

    python benchmarks/bench_models.py                       # 224x224, batch 32, CPU
    python benchmarks/bench_models.py --resolution 32 --batch 128 --stem cifar --num-classes 10
    python benchmarks/bench_models.py --models shufflenet_v2 ghostnet --iters 20 --device cuda
    python benchmarks/bench_models.py --shuffle-cost        # also: time spent in channel shuffle

For every pair, the two networks are timed alternately (ours, twin, ours, twin, ...) so that a change of machine
load hits both; each figure is the median over `--iters` steps of a training step without optimiser:
zero grads, forward, cross-entropy, backward. ratio = ours / twin (below 1: ours is faster).

ShuffleNet V1 has no torchvision/timm twin and is timed alone. `--shuffle-cost` times the ShuffleNets again
with the channel shuffle replaced by the identity (same FLOPs, no data movement): the difference is what the
shuffles cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lnrepro.models import build_model
from lnrepro.profiling import synchronize


def _torchvision(name: str, **kwargs) -> Callable[[int], nn.Module]:
    def make(num_classes: int) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(num_classes=num_classes, **kwargs)

    return make


def _timm(name: str) -> Callable[[int], nn.Module]:
    def make(num_classes: int) -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes)

    return make


# label, our model name and kwargs, twin constructor (None: no twin)
PAIRS: list[tuple[str, str, dict, Callable[[int], nn.Module] | None]] = [
    ("mobilenet_v1 (relu6) | timm mobilenetv1_100", "mobilenet_v1", dict(activation="relu6"), _timm("mobilenetv1_100")),
    ("mobilenet_v2 | tv mobilenet_v2", "mobilenet_v2", {}, _torchvision("mobilenet_v2")),
    ("mobilenet_v3_large | tv mobilenet_v3_large", "mobilenet_v3_large", {}, _torchvision("mobilenet_v3_large")),
    ("mobilenet_v3_small | tv mobilenet_v3_small", "mobilenet_v3_small", {}, _torchvision("mobilenet_v3_small")),
    ("shufflenet_v1 g=3 | (no twin)", "shufflenet_v1", dict(groups=3), None),
    ("shufflenet_v2 | tv shufflenet_v2_x1_0", "shufflenet_v2", {}, _torchvision("shufflenet_v2_x1_0")),
    ("ghostnet | timm ghostnet_100", "ghostnet", {}, _timm("ghostnet_100")),
    ("resnet34 | tv resnet34", "resnet34", {}, _torchvision("resnet34")),
    ("vgg16 | tv vgg16_bn", "vgg16", {}, _torchvision("vgg16_bn")),
]


def _step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
    model.zero_grad(set_to_none=True)
    synchronize(device)
    start = time.perf_counter()
    nn.functional.cross_entropy(model(images), labels).backward()
    synchronize(device)
    return time.perf_counter() - start


def time_models(models: list[nn.Module], images, labels, device, warmup: int, iters: int) -> list[float]:
    """Median seconds per step of each model, measured alternately."""
    for model in models:
        model.train()
        for _ in range(warmup):
            _step(model, images, labels, device)
    samples: list[list[float]] = [[] for _ in models]
    for _ in range(iters):
        for i, model in enumerate(models):
            samples[i].append(_step(model, images, labels, device))
    return [statistics.median(s) for s in samples]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--stem", default="imagenet", help="stem for our models (twins always use their own)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--models", nargs="*", default=None, help="our model names to include (default: all)")
    parser.add_argument("--shuffle-cost", action="store_true", help="also time ShuffleNets without channel shuffle")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.resolution, args.resolution, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch,), device=device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    images = images.contiguous(memory_format=memory_format)

    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"batch {args.batch}, {args.resolution}x{args.resolution}, stem {args.stem}, "
        f"median of {args.iters} forward+backward steps"
    )
    print(f"{'network (ours | twin)':46s} {'ours ms':>9s} {'twin ms':>9s} {'ratio':>7s}")
    for label, name, kwargs, make_twin in PAIRS:
        if args.models and name not in args.models:
            continue
        ours = build_model(name, num_classes=args.num_classes, stem=args.stem, **kwargs)
        models = [ours] + ([make_twin(args.num_classes)] if make_twin else [])
        models = [m.to(device, memory_format=memory_format) for m in models]
        times = time_models(models, images, labels, device, args.warmup, args.iters)
        if make_twin:
            print(f"{label:46s} {times[0] * 1e3:9.1f} {times[1] * 1e3:9.1f} {times[0] / times[1]:7.2f}")
        else:
            print(f"{label:46s} {times[0] * 1e3:9.1f} {'-':>9s} {'-':>7s}")
        del models, ours

    if args.shuffle_cost:
        _print_shuffle_cost(args, images, labels, device, memory_format)


def _print_shuffle_cost(args, images, labels, device, memory_format) -> None:
    """Time the ShuffleNets with and without their channel shuffles."""
    from lnrepro.models import shufflenet_v1, shufflenet_v2

    print(f"\n{'channel shuffle cost':46s} {'with ms':>9s} {'without':>9s} {'share':>7s}")
    for label, module, kwargs in (
        ("shufflenet_v1 g=3", shufflenet_v1, dict(groups=3)),
        ("shufflenet_v2 1.0", shufflenet_v2, {}),
    ):
        name = module.__name__.rsplit(".", 1)[-1]
        model = build_model(name, num_classes=args.num_classes, stem=args.stem, **kwargs)
        model = model.to(device, memory_format=memory_format)
        with_shuffle = time_models([model], images, labels, device, args.warmup, args.iters)[0]
        original = module.channel_shuffle
        module.channel_shuffle = lambda x, groups: x  # same network, no data movement
        try:
            without = time_models([model], images, labels, device, args.warmup, args.iters)[0]
        finally:
            module.channel_shuffle = original
        share = (with_shuffle - without) / with_shuffle
        print(f"{label:46s} {with_shuffle * 1e3:9.1f} {without * 1e3:9.1f} {share:7.1%}")


if __name__ == "__main__":
    main()
