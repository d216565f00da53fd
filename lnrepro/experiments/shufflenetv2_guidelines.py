"""The four micro-benchmarks of ShuffleNet V2 (Ma et al., ECCV 2018, arXiv:1807.11164, Sec. 2 and Tables 1-4),
measured on this device: which of the paper's practical guidelines hold on your hardware.

- G1, equal channel width minimises memory access cost (Table 1): 10 blocks of two 1x1 convolutions, c1 -> c2 -> c1,
  with c1:c2 = 1:1, 1:2, 1:6, 1:12 and c1 x c2 held near base^2, so that every ratio has the same FLOPs.
- G2, excessive group convolution increases MAC (Table 2): 10 1x1 group convolutions c -> c with g = 1, 2, 4, 8 and
  c = base x sqrt(g) (rounded down to a multiple of g), so that c^2 / g, the FLOPs, stays the same.
- G3, network fragmentation reduces parallelism (Table 3): 10 blocks of 1, 2 or 4 1x1 convolutions, run in series or
  in parallel; the fragmented blocks' width is base / sqrt(n) so that their FLOPs equal the 1-fragment block's.
  The parallel branches all read the block's input and are summed (the paper's appendix figure draws the
  structures; how it merges parallel branches is our reading of it).
- G4, element-wise operations are non-negligible (Table 4): 10 ResNet bottleneck units (1x1 4c -> c, 3x3 c -> c,
  1x1 c -> 4c) with and without ReLU and the identity shortcut. FLOPs and convolution MAC are the same in all four;
  the element-wise operations' own memory traffic is reported separately.

All convolutions are bias-free and without BatchNorm (a deployed network folds BatchNorm into the convolution), so
that each table varies exactly one thing. The paper's input is 56x56 with 10 stacked units; GPU figures are batches/s
at batch 8 (GTX 1080Ti), ARM/CPU figures images/s at batch 1 (Snapdragon 810, one thread). `base` selects the
channel setting; at the paper's bases (x1, x2 and x4, e.g. `scale` 1, 2, 4) the rows carry the paper's figures for
reference.

Every row is timed in each runtime asked for (`lnrepro.profiling.runtimes`: eager PyTorch, and the kernels a deployed
network runs on, ONNX Runtime and XNNPACK through ExecuTorch), because a guideline about memory access and operator
count is a claim about kernels: whether it holds can change with the runtime. Each table says, per runtime and for the
paper's own figures, whether its guideline holds (`PREDICTIONS`, `HOLDS_AT_MOST`).

FLOPs = 2 x multiply-adds, as everywhere in this project; MAC (memory access cost) is in bytes (fp32: 4 per element).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lnrepro.errors import UserInputError
from lnrepro.profiling.context import measurement_context, percentile, random_input
from lnrepro.profiling.counts import count_macs, evaluation_mode
from lnrepro.profiling.measure import ProfileSettings
from lnrepro.profiling.runtimes import INT8_RUNTIMES, check_runtime, prepare
from lnrepro.profiling.timing import inference_throughput
from lnrepro.utils.files import atomic_write_text
from lnrepro.utils.tables import markdown_table, print_table

log = logging.getLogger("lnrepro")

GUIDELINES = ("g1", "g2", "g3", "g4")
TITLES = {
    "g1": "G1: equal channel width minimizes memory access cost (ShuffleNet V2 Table 1)",
    "g2": "G2: excessive group convolution increases MAC (ShuffleNet V2 Table 2)",
    "g3": "G3: network fragmentation reduces degree of parallelism (ShuffleNet V2 Table 3)",
    "g4": "G4: element-wise operations are non-negligible (ShuffleNet V2 Table 4)",
}
#: The paper's channel settings (x1 columns): GPU tables at these bases, ARM/CPU tables at those.
PAPER_BASES = {"gpu": {"g1": 128, "g2": 128, "g3": 128, "g4": 32}, "arm": {"g1": 32, "g2": 64, "g3": 64, "g4": 32}}
PAPER_INPUT = 56
PAPER_BLOCKS = 10
PAPER_BATCH = {"gpu": 8, "arm": 1}
#: The paper's figures, transcribed from Tables 1-4 of arXiv:1807.11164 (checked cell by cell against two
#: independent transcriptions of the paper): {guideline: {platform: {base: figures in row order}}}. GPU figures are
#: batches/s ("GPU (Batches/sec.)", GTX 1080Ti), ARM figures images/s (Table 1's "ARM (Images/sec.)", Tables 2-4's
#: "CPU (Images/sec.)": the same Snapdragon 810, one thread). The tables' columns are the x1, x2 and x4 channel
#: settings; Tables 3 and 4 print them as c = base, 2 base, 4 base, Tables 1 and 2 print only the x1 channels, and
#: we read their x2 and x4 columns the same way (channels doubled, FLOPs x4). The batch sizes (8 on the GPU, 1 on
#: ARM) are the paper's Fig. 1 settings; the tables do not restate them, and Table 4 states no input size.
PAPER_FIGURES = {
    "g1": {
        "gpu": {128: (1480, 1296, 876, 748), 256: (723, 586, 489, 392), 512: (232, 206, 189, 163)},
        "arm": {32: (76.2, 72.9, 69.1, 57.6), 64: (21.7, 20.5, 17.9, 15.1), 128: (5.3, 5.1, 4.6, 4.4)},
    },
    "g2": {
        "gpu": {128: (2451, 1725, 1026, 634), 256: (1289, 873, 644, 445), 512: (437, 341, 338, 230)},
        "arm": {64: (40.0, 35.0, 32.9, 27.8), 128: (10.2, 9.5, 8.7, 7.5), 256: (2.3, 2.2, 2.1, 1.8)},
    },
    "g3": {
        "gpu": {128: (2446, 1790, 752, 1537, 691), 256: (1274, 909, 745, 803, 572), 512: (434, 336, 349, 320, 292)},
        "arm": {64: (40.2, 38.6, 38.4, 33.4, 35.0), 128: (10.1, 10.1, 10.1, 9.1, 8.4), 256: (2.3, 2.2, 2.3, 2.2, 2.1)},
    },
    "g4": {
        "gpu": {32: (2427, 2647, 2672, 2842), 64: (2066, 2256, 2121, 2376), 128: (1436, 1735, 1458, 1782)},
        "arm": {32: (56.7, 61.9, 57.3, 66.3), 64: (16.9, 18.8, 18.2, 20.2), 128: (5.0, 5.2, 5.1, 5.4)},
    },
}


class Add(nn.Module):
    """x + y as a module, so that hooks see the element-wise addition (memory traffic: two reads, one write)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


def conv1x1(c_in: int, c_out: int, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, groups=groups, bias=False)


# --- G1 -----------------------------------------------------------------------------------------------------------
G1_RATIOS = (1, 2, 6, 12)


def g1_channels(ratio: int, base: int) -> tuple[int, int]:
    """(c1, c2) with c2 = ratio x c1 and c1 x c2 ~ base^2: c1 = floor(base / sqrt(ratio)) (the paper's rule:
    128 -> (128,128), (90,180), (52,312), (36,432))."""
    c1 = max(1, int(base / math.sqrt(ratio)))
    return c1, ratio * c1


def g1_network(ratio: int, base: int, blocks: int = PAPER_BLOCKS) -> nn.Sequential:
    c1, c2 = g1_channels(ratio, base)
    return nn.Sequential(*[nn.Sequential(conv1x1(c1, c2), conv1x1(c2, c1)) for _ in range(blocks)])


# --- G2 -----------------------------------------------------------------------------------------------------------
G2_GROUPS = (1, 2, 4, 8)


def g2_channels(groups: int, base: int) -> int:
    """c = base x sqrt(g) (truncated), then to the nearest multiple of g (128 -> 128, 180, 256, 360)."""
    return max(groups, round(int(base * math.sqrt(groups)) / groups) * groups)


def g2_network(groups: int, base: int, blocks: int = PAPER_BLOCKS) -> nn.Sequential:
    c = g2_channels(groups, base)
    return nn.Sequential(*[conv1x1(c, c, groups) for _ in range(blocks)])


# --- G3 -----------------------------------------------------------------------------------------------------------
class Fragmented(nn.Module):
    """`fragments` 1x1 convolutions of width c, in series (one after another) or in parallel (all on the input,
    summed)."""

    def __init__(self, c: int, fragments: int, parallel: bool):
        super().__init__()
        self.parallel = parallel and fragments > 1
        self.convs = nn.ModuleList(conv1x1(c, c) for _ in range(fragments))
        self.adds = nn.ModuleList(Add() for _ in range(fragments - 1)) if self.parallel else nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.parallel:
            for conv in self.convs:
                x = conv(x)
            return x
        out = self.convs[0](x)
        for conv, add in zip(self.convs[1:], self.adds):
            out = add(out, conv(x))
        return out


G3_SETTINGS = (
    ("1-fragment", 1, False),
    ("2-fragment-series", 2, False),
    ("4-fragment-series", 4, False),
    ("2-fragment-parallel", 2, True),
    ("4-fragment-parallel", 4, True),
)


def g3_channels(fragments: int, base: int) -> int:
    """Width of each fragment: floor(base / sqrt(n)), so that n x c^2 ~ base^2 (128 -> 128, 90, 64)."""
    return max(1, int(base / math.sqrt(fragments)))


def g3_network(fragments: int, parallel: bool, base: int, blocks: int = PAPER_BLOCKS) -> nn.Sequential:
    """`blocks` fragmented blocks of width `g3_channels(fragments, base)` (their input has that many channels)."""
    c = g3_channels(fragments, base)
    return nn.Sequential(*[Fragmented(c, fragments, parallel) for _ in range(blocks)])


# --- G4 -----------------------------------------------------------------------------------------------------------
class Bottleneck(nn.Module):
    """ResNet's bottleneck unit (He et al. 2016): 1x1 4c -> c, 3x3 c -> c, 1x1 c -> 4c, identity shortcut, with
    ReLU after each convolution and after the addition; `relu` / `shortcut` switch those off."""

    def __init__(self, c: int, relu: bool = True, shortcut: bool = True):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = (
            conv1x1(4 * c, c),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            conv1x1(c, 4 * c),
        )
        act = (lambda: nn.ReLU()) if relu else (lambda: nn.Identity())
        self.act1, self.act2, self.act3 = act(), act(), act()
        self.add = Add() if shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))
        if self.add is not None:
            out = self.add(out, x)
        return self.act3(out)


G4_SETTINGS = (
    ("ReLU yes, shortcut yes", True, True),
    ("ReLU yes, shortcut no", True, False),
    ("ReLU no, shortcut yes", False, True),
    ("ReLU no, shortcut no", False, False),
)


def g4_network(relu: bool, shortcut: bool, base: int, blocks: int = PAPER_BLOCKS) -> nn.Sequential:
    return nn.Sequential(*[Bottleneck(base, relu, shortcut) for _ in range(blocks)])


def elementwise_bytes(model: nn.Module, input_shape: tuple[int, int, int], bytes_per_element: int = 4) -> int:
    """Memory traffic of the element-wise modules (ReLU: read + write; Add: two reads + one write) for one
    image; the memory access cost of `counts` leaves these out, as the paper's MAC does."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += (sum(t.numel() for t in inputs if isinstance(t, torch.Tensor)) + output.numel()) * bytes_per_element

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.ReLU, Add))]
    try:
        with evaluation_mode(model):
            model(random_input(model, 1, input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return total


# --- the benchmarks -----------------------------------------------------------------------------------------------
@dataclass
class Setting:
    """One row of a table: the network and the shape of its input (C, H, W)."""

    name: str
    channels: str
    network: nn.Module
    input_shape: tuple[int, int, int]


def unknown_guideline(guideline: str) -> UserInputError:
    return UserInputError(f"unknown guideline {guideline!r} in profile.guidelines; choose from {', '.join(GUIDELINES)}")


def settings(guideline: str, base: int, size: int = PAPER_INPUT, blocks: int = PAPER_BLOCKS) -> list[Setting]:
    """The rows of one guideline's table at channel setting `base` and input side `size`."""
    if guideline == "g1":
        rows = []
        for ratio in G1_RATIOS:
            c1, c2 = g1_channels(ratio, base)
            rows.append(Setting(f"1:{ratio}", f"({c1},{c2})", g1_network(ratio, base, blocks), (c1, size, size)))
        return rows
    if guideline == "g2":
        return [
            Setting(
                f"g={g}", f"c={g2_channels(g, base)}", g2_network(g, base, blocks), (g2_channels(g, base), size, size)
            )
            for g in G2_GROUPS
        ]
    if guideline == "g3":
        return [
            Setting(
                name,
                f"c={g3_channels(n, base)}",
                g3_network(n, parallel, base, blocks),
                (g3_channels(n, base), size, size),
            )
            for name, n, parallel in G3_SETTINGS
        ]
    if guideline == "g4":
        return [
            Setting(name, f"c={base}", g4_network(relu, shortcut, base, blocks), (4 * base, size, size))
            for name, relu, shortcut in G4_SETTINGS
        ]
    raise unknown_guideline(guideline)


def setting_names(guideline: str) -> list[str]:
    """The rows' names of a guideline's table, in order, without building its networks (as `settings` names them)."""
    if guideline == "g1":
        return [f"1:{ratio}" for ratio in G1_RATIOS]
    if guideline == "g2":
        return [f"g={groups}" for groups in G2_GROUPS]
    if guideline == "g3":
        return [name for name, *_ in G3_SETTINGS]
    if guideline == "g4":
        return [name for name, *_ in G4_SETTINGS]
    raise unknown_guideline(guideline)


def table_rows(guideline: str) -> int:
    """How many rows `settings` gives the guideline's table, without building its networks."""
    return len(setting_names(guideline))


def paper_figures(guideline: str, base: int, size: int, blocks: int) -> dict[str, tuple | None]:
    """The paper's figures for this table where `base` is one of its channel settings (x1, x2, x4) and `size` and
    `blocks` are the paper's, else None."""
    same_setup = size == PAPER_INPUT and blocks == PAPER_BLOCKS
    return {
        platform: by_base.get(base) if same_setup else None for platform, by_base in PAPER_FIGURES[guideline].items()
    }


# --- whether a guideline holds -------------------------------------------------------------------------------------
#: What each guideline predicts, as the rows its verdict compares: (the row the paper says is fastest, the rows it
#: says are slower). The extremes of each table: G1's 1:2 moves MAC by 3% only (the paper's own ARM figure for it is
#: 0.96 of 1:1); G3 names both four-fragment structures, since fragmentation is predicted to slow a block in series
#: as well as in parallel; G4's fastest row is its last (neither ReLU nor shortcut).
PREDICTIONS = {
    "g1": ("1:1", ("1:12",)),
    "g2": ("g=1", ("g=8",)),
    "g3": ("1-fragment", ("4-fragment-series", "4-fragment-parallel")),
    "g4": ("ReLU no, shortcut no", ("ReLU yes, shortcut yes",)),
}
#: A guideline holds in a runtime when each predicted-slower row runs at most this fraction of the predicted-fastest
#: row's speed: an effect under 5% is within what two rows of one table move apart from one run to the next on a
#: shared CPU. (By this rule the paper's own ARM figures do not make G3 hold, 0.96, as the paper says of ARM.)
HOLDS_AT_MOST = 0.95


def verdict_ratio(guideline: str, speeds: Mapping[str, Sequence[float]]) -> float | None:
    """The speed of the guideline's predicted-slower row over its predicted-fastest row (`PREDICTIONS`; the largest
    such ratio where it names several), from {setting: speeds in round order}: the median of the rounds' ratios,
    each taken within one round, so that a change of the machine's load between rounds cancels out. None when a
    compared row was not measured. One figure per row (the paper's) gives their plain ratio."""
    fastest, slower = PREDICTIONS[guideline]
    if any(not speeds.get(name) for name in (fastest, *slower)):
        return None
    return max(percentile([s / f for s, f in zip(speeds[name], speeds[fastest])], 50) for name in slower)


def holds(ratio: float | None) -> bool | None:
    """Whether a guideline holds at this `verdict_ratio` (None: not measured)."""
    return None if ratio is None else ratio <= HOLDS_AT_MOST


def verdict_text(ratio: float | None) -> str:
    if ratio is None:
        return "not measured"
    return f"{'holds' if holds(ratio) else 'does not hold'} ({ratio:.2f})"


def paper_verdict_ratio(guideline: str, figures: Sequence[float] | None) -> float | None:
    """`verdict_ratio` of the paper's figures for one table (in row order); None where the paper has none."""
    if figures is None:
        return None
    return verdict_ratio(guideline, {name: [figure] for name, figure in zip(setting_names(guideline), figures)})


@dataclass
class GuidelineRow:
    """One row of a guideline's table in one runtime."""

    guideline: str
    setting: str
    channels: str
    runtime: str  # what ran the row: one of lnrepro.schema.RUNTIMES
    flops: int  # of one image, FLOPs = 2 x multiply-adds
    mac_bytes: int  # memory access cost of the convolutions, one image
    elementwise_bytes: int  # memory traffic of ReLU and additions, one image (left out of MAC)
    images_per_s: float | None  # median over the rounds; None: the runtime could not prepare this row (`error`)
    spread: float | None  # interquartile range of the rounds' images/s over their median
    ms_per_batch: float | None
    relative_speed: float | None  # images/s over the table's first row's, in the same runtime
    paper_gpu: float | None  # batches/s, batch 8, GTX 1080Ti
    paper_arm: float | None  # images/s, batch 1, ARM
    paper_gpu_first: float | None  # the paper's figure for the table's first row (for relative speed)
    paper_arm_first: float | None
    verdict_ratio: float | None  # the table's `verdict_ratio` in this runtime (the same on each of its rows)
    holds: bool | None  # whether the guideline holds in this runtime (`holds`; None: not measured)
    prepare_s: float | None  # seconds to prepare the row in the runtime (export, lowering, first call), untimed
    max_abs_diff: float | None  # largest |output - eager output| on one input (runtimes.prepare); None for eager
    error: str | None  # why the runtime could not prepare this row, in one line
    context: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(row.pop("context"))
        return row


ROUNDS = 5  # timing rounds per table by default
#: The runtime `run_guideline` times when given none: eager PyTorch, as the paper timed its benchmarks in its
#: framework.
DEFAULT_RUNTIMES = ("eager",)
CALIBRATION_IMAGES = 64  # random inputs that calibrate the int8 runtimes' activation ranges (their speed only)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}"


def run_guideline(
    guideline: str,
    base: int | None = None,
    scale: float = 1.0,
    size: int = PAPER_INPUT,
    blocks: int = PAPER_BLOCKS,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    runs: int = 10,
    warmup: int = 2,
    rounds: int = ROUNDS,
    platform: str | None = None,
    runtimes: Sequence[str] = DEFAULT_RUNTIMES,
    calibration_images: int = CALIBRATION_IMAGES,
    step: Callable[[], None] | None = None,
) -> list[GuidelineRow]:
    """Build, count and time every row of one guideline's table in each of `runtimes` (`lnrepro.schema.RUNTIMES`);
    rows in table order, each row's runtimes in the order given. `base` defaults to the paper's setting for
    `platform` ("gpu" or "arm"; by default "gpu" on CUDA, "arm" otherwise) times `scale`; `batch_size` to the
    paper's (8 for "gpu", 1 for "arm").

    Each row is first prepared once in each runtime (`lnrepro.profiling.runtimes.prepare`, then one untimed call at
    the batch size; int8 runtimes calibrate on `calibration_images` random inputs), untimed; a runtime that cannot
    prepare a row leaves that row's `error` and no speed, and the rest is measured. Speed is
    `inference_throughput` of the prepared runner (eval mode, no_grad) over `runs` batches, measured in `rounds`
    rounds that visit every (row, runtime) in turn (the first round after `warmup` batches each); a row's images/s
    is its median over the rounds and `spread` their interquartile range over the median. Interleaving matters
    because the rows are compared with each other: a change of the machine's load during the table then hits every
    row alike instead of whichever row was being timed. `step` is called after each preparation and each timing
    (rows x runtimes x (1 + rounds) calls), between measurements."""
    platform = platform or ("gpu" if torch.device(device).type == "cuda" else "arm")
    if platform not in PAPER_BASES:
        raise UserInputError(f"profile.guideline.platform must be 'gpu', 'arm' or null, got {platform!r}")
    if rounds < 1 or runs < 1:
        raise UserInputError(
            f"profile.guideline.rounds and profile.runs must be at least 1, got rounds={rounds}, runs={runs}"
        )
    runtimes = list(runtimes)
    if not runtimes:
        raise UserInputError("profile.runtimes is empty: name at least one runtime to time the guideline tables in")
    for runtime in runtimes:
        check_runtime(runtime, device)
    base = int(base or max(1, round(PAPER_BASES[platform][guideline] * scale)))
    batch_size = int(batch_size or PAPER_BATCH[platform])
    paper = paper_figures(guideline, base, size, blocks)
    table = settings(guideline, base, size, blocks)
    runners, prepare_s, errors = {}, {}, {}
    for row, setting in enumerate(table):
        setting.network.to(device).eval()
        for runtime in runtimes:
            start = time.perf_counter()
            try:
                calibration = (
                    random_input(setting.network, calibration_images, setting.input_shape).cpu()
                    if runtime in INT8_RUNTIMES
                    else None
                )
                runner = prepare(runtime, setting.network, setting.input_shape, calibration=calibration)
                runner(random_input(setting.network, batch_size, setting.input_shape))  # compiles, or fails, here
            except Exception as error:  # one runtime's failure on one row must not cost the table
                errors[row, runtime] = _one_line(error)
            else:
                runners[row, runtime], prepare_s[row, runtime] = runner, time.perf_counter() - start
            if step:
                step()
    speeds: dict[tuple[int, str], list[float]] = {key: [] for key in runners}
    for round_index in range(rounds):
        for row, setting in enumerate(table):
            for runtime in runtimes:
                if (row, runtime) in runners:
                    speeds[row, runtime].append(
                        inference_throughput(
                            setting.network,
                            batch_size,
                            setting.input_shape,
                            runs=runs,
                            warmup=warmup if round_index == 0 else 1,
                            run=runners[row, runtime],
                        ).images_per_s
                    )
                if step:
                    step()
    ratios = {
        runtime: verdict_ratio(guideline, {s.name: speeds.get((row, runtime), []) for row, s in enumerate(table)})
        for runtime in runtimes
    }
    rows: list[GuidelineRow] = []
    for row, setting in enumerate(table):
        net = setting.network
        macs = count_macs(net, setting.input_shape)  # fp32: 4 bytes per element in mac_bytes
        traffic = elementwise_bytes(net, setting.input_shape)
        context = measurement_context(net, batch_size, setting.input_shape) | {
            "blocks": blocks,
            "runs": runs,
            "rounds": rounds,
        }
        for runtime in runtimes:
            measured = speeds.get((row, runtime))
            speed = percentile(measured, 50) if measured else None
            first = speeds.get((0, runtime))
            runner = runners.get((row, runtime))
            rows.append(
                GuidelineRow(
                    guideline=guideline,
                    setting=setting.name,
                    channels=setting.channels,
                    runtime=runtime,
                    flops=macs.flops,
                    mac_bytes=macs.mac_bytes,
                    elementwise_bytes=traffic,
                    images_per_s=speed,
                    spread=(percentile(measured, 75) - percentile(measured, 25)) / speed if speed else None,
                    ms_per_batch=1000 * batch_size / speed if speed else None,
                    relative_speed=speed / percentile(first, 50) if speed and first else None,
                    paper_gpu=paper["gpu"][row] if paper["gpu"] else None,
                    paper_arm=paper["arm"][row] if paper["arm"] else None,
                    paper_gpu_first=paper["gpu"][0] if paper["gpu"] else None,
                    paper_arm_first=paper["arm"][0] if paper["arm"] else None,
                    verdict_ratio=ratios[runtime],
                    holds=holds(ratios[runtime]),
                    prepare_s=prepare_s.get((row, runtime)),
                    max_abs_diff=runner.facts.get(f"{runtime}/max_abs_diff") if runner else None,
                    error=errors.get((row, runtime)),
                    context=dict(context),
                )
            )
    return rows


def run_guidelines(
    guidelines=GUIDELINES, progress: Callable[[str, int, int], None] | None = None, **kwargs
) -> dict[str, list[GuidelineRow]]:
    """`run_guideline` for each of `guidelines`; keyword arguments go to each (pass `scale` rather than `base`:
    each table has its own paper setting). Every name is checked before the first table is measured.
    `progress(guideline, done, total)` is called as each table starts and after each of its steps: `done` of the
    `total` steps of all tables (each row's preparation in each runtime, then its timings: rows x runtimes x
    (1 + rounds) each), e.g. for a progress bar."""
    unknown = [g for g in guidelines if g not in GUIDELINES]
    if unknown:
        raise unknown_guideline(unknown[0])
    per_row = len(kwargs.get("runtimes", DEFAULT_RUNTIMES)) * (1 + kwargs.get("rounds", ROUNDS))
    total = per_row * sum(table_rows(g) for g in guidelines)
    tables, done = {}, 0
    for guideline in guidelines:
        if progress:
            progress(guideline, done, total)

        def step(guideline: str = guideline) -> None:
            nonlocal done
            done += 1
            progress(guideline, done, total)

        tables[guideline] = run_guideline(guideline, step=step if progress else None, **kwargs)
    return tables


# --- the tables, printed and written as guidelines.md / guidelines.csv (lnrepro-profile experiment=...) -------
def paper_cell(value: float | None, first: float | None) -> str | None:
    """The paper's figure with its speed relative to the table's first row: what can be compared across devices."""
    return None if value is None else f"{value:g} ({value / first:.2f})"


def speed_cell(row: dict[str, Any]) -> str:
    """One runtime's images/s of a row, with its speed relative to the table's first row."""
    if row["images_per_s"] is None:
        return "failed" if row["error"] else "-"
    relative = "-" if row["relative_speed"] is None else f"{row['relative_speed']:.2f}"
    return f"{row['images_per_s']:.1f} ({relative})"


def by_setting(rows: Sequence[dict[str, Any]]) -> list[dict[str, dict[str, Any]]]:
    """A table's rows as [{runtime: row}] in table order: one entry per setting."""
    grouped: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["setting"], {})[row["runtime"]] = row
    return list(grouped.values())


def table_runtimes(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(row["runtime"] for row in rows))


def guideline_columns(
    runtimes: Sequence[str], header_break: str = " "
) -> list[tuple[str, bool, Callable[[dict[str, dict]], str | None]]]:
    """(column title, left-aligned, cell text of a setting's {runtime: row} or None for "-") of a guideline table:
    the counts, one speed column per runtime, the paper's figures; guidelines.csv has every figure of every row.
    `header_break` splits the long titles (a newline keeps a terminal table with three runtimes within 160
    columns)."""

    def first(rows: dict[str, dict]) -> dict[str, Any]:
        return next(iter(rows.values()))

    def speed(runtime: str) -> Callable[[dict[str, dict]], str]:
        return lambda rows: speed_cell(rows[runtime])

    return [
        ("setting", True, lambda r: first(r)["setting"]),
        ("channels", True, lambda r: first(r)["channels"]),
        ("FLOPs (M)", False, lambda r: f"{first(r)['flops'] / 1e6:.1f}"),
        ("MAC (MB)", False, lambda r: f"{first(r)['mac_bytes'] / 2**20:.2f}"),
        (f"elem-wise{header_break}(MB)", False, lambda r: f"{first(r)['elementwise_bytes'] / 2**20:.2f}"),
        *[(f"{runtime}{header_break}img/s (rel.)", False, speed(runtime)) for runtime in runtimes],
        (
            f"paper GPU{header_break}batch/s (rel.)",
            False,
            lambda r: paper_cell(first(r)["paper_gpu"], first(r)["paper_gpu_first"]),
        ),
        (
            f"paper ARM{header_break}img/s (rel.)",
            False,
            lambda r: paper_cell(first(r)["paper_arm"], first(r)["paper_arm_first"]),
        ),
    ]


def guideline_table(
    rows: Sequence[dict[str, Any]], header_break: str = " "
) -> tuple[list[tuple[str, bool]], list[list[str]]]:
    """The columns and cells of one guideline's table, from its rows (`GuidelineRow.as_dict`)."""
    columns = guideline_columns(table_runtimes(rows), header_break)
    cells = [
        [cell if (cell := text(setting)) is not None else "-" for _, _, text in columns] for setting in by_setting(rows)
    ]
    return [(title, left) for title, left, _ in columns], cells


def verdicts(guideline: str, rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """{"paper GPU" and "paper ARM" where this table has the paper's figures, then each runtime: `verdict_ratio`}
    of one table, from its rows."""
    first_runtime = [next(iter(setting.values())) for setting in by_setting(rows)]
    found: dict[str, float | None] = {}
    for platform in ("gpu", "arm"):
        figures = [row[f"paper_{platform}"] for row in first_runtime]
        if None not in figures:
            found[f"paper {platform.upper()}"] = paper_verdict_ratio(guideline, figures)
    for runtime in table_runtimes(rows):
        found[runtime] = next(row for row in rows if row["runtime"] == runtime)["verdict_ratio"]
    return found


def verdict_line(guideline: str, rows: Sequence[dict[str, Any]]) -> str:
    fastest, slower = PREDICTIONS[guideline]
    found = ", ".join(f"{name} {verdict_text(ratio)}" for name, ratio in verdicts(guideline, rows).items())
    rule = f"{' and '.join(slower)} at most {HOLDS_AT_MOST} of {fastest}'s speed"
    return f"{guideline.upper()} holds where {rule}: {found}"


def verdict_table(tables: Mapping[str, Sequence[dict[str, Any]]]) -> tuple[list[tuple[str, bool]], list[list[str]]]:
    """One row per guideline: what its verdict compares, then whether it holds in the paper's figures (where this
    run is at the paper's setting) and in each runtime, with the ratio it rests on."""
    found = {guideline: verdicts(guideline, rows) for guideline, rows in tables.items()}
    present = {name for by_name in found.values() for name in by_name}
    runtimes = dict.fromkeys(runtime for rows in tables.values() for runtime in table_runtimes(rows))
    names = [name for name in ("paper GPU", "paper ARM", *runtimes) if name in present]
    columns = [("guideline", True), ("slower / fastest", True), *[(name, True) for name in names]]
    cells = []
    for guideline, by_name in found.items():
        fastest, slower = PREDICTIONS[guideline]
        cells.append(
            [
                guideline.upper(),
                f"{' and '.join(slower)} / {fastest}",
                *[verdict_text(by_name[name]) if name in by_name else "-" for name in names],
            ]
        )
    return columns, cells


VERDICT_TITLE = "Does each guideline hold? (speed of the predicted-slower row / the predicted-fastest)"


def verdict_caption() -> str:
    return (
        f"holds: each predicted-slower row runs at most {HOLDS_AT_MOST} of the predicted-fastest row's speed "
        "(runtimes: median over the rounds of the ratio within each round; paper: its figures, where this run is at "
        "the paper's setting)"
    )


def guideline_caption(rows: list[dict[str, Any]]) -> str:
    first = rows[0]
    spreads = ", ".join(
        f"{runtime} {max(spread):.0%}"
        for runtime in table_runtimes(rows)
        if (spread := [r["spread"] for r in rows if r["runtime"] == runtime and r["spread"] is not None])
    )
    return (
        f"one image: FLOPs = 2 x multiply-adds, MAC = conv inputs + outputs + weights (fp32); speed at batch "
        f"{first['batch_size']}, input {first['input_size']} (first row), {first['blocks']} blocks, median of "
        f"{first['rounds']} interleaved rounds of {first['runs']} batches per runtime (rel.: relative to the first "
        f"row); largest spread (the rounds' interquartile range / median): {spreads or 'none measured'}; "
        f"{first['device']}, {first['dtype']}, threads {first['threads']}, torch {first['torch_version']}"
    )


def failures(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per row a runtime could not prepare."""
    return [
        f"{row['guideline'].upper()} {row['setting']}: {row['runtime']} could not run it: {row['error']}"
        for row in rows
        if row["error"]
    ]


def guidelines_markdown(tables: dict[str, list[dict[str, Any]]]) -> str:
    parts = []
    for guideline, rows in tables.items():
        parts.append(f"### {TITLES[guideline]}\n")
        parts.extend(markdown_table(*guideline_table(rows)))
        parts.append(f"\n{guideline_caption(rows)}\n")
        parts.append(f"{verdict_line(guideline, rows)}\n")
        parts.extend(f"- {line}" for line in failures(rows))
    parts.append(f"### {VERDICT_TITLE}\n")
    parts.extend(markdown_table(*verdict_table(tables)))
    parts.append(f"\n{verdict_caption()}\n")
    return "\n".join(parts)


#: This experiment's keys in the `profile` config node, set by conf/experiment/shufflenetv2_guidelines.yaml (which
#: documents them): `guidelines`, the tables to run, and `guideline`, their options (`run_guideline`'s keyword
#: arguments). They are not `ProfileSettings`: lnrepro-profile takes them out of the node and hands them here.
CONFIG_KEYS = ("guidelines", "guideline")


def profile_guidelines(
    guidelines: Sequence[str], options: Mapping[str, Any], settings: ProfileSettings, output_dir: Path
) -> dict[str, Any]:
    """ShuffleNet V2's guideline benchmarks `guidelines` (conf/experiment/shufflenetv2_guidelines.yaml) with
    `options` (`profile.guideline`) on `settings.device`, in each of `settings.runtimes` (int8 ones calibrated on
    `settings.calibration_images` random inputs), timed with `settings.runs` and `settings.warmup`: one table each
    and whether each guideline holds in each runtime, printed and written to guidelines.md and guidelines.csv (one
    line per row and runtime) in the run directory; returns {guideline: rows}."""
    from lnrepro.utils.progress import measurement_progress

    for runtime in settings.runtimes:  # a missing package is refused before anything is measured
        try:
            check_runtime(runtime, settings.device)
        except UserInputError as error:
            others = ",".join(r for r in settings.runtimes if r != runtime)
            raise UserInputError(f"{error}; or time the guidelines without it: profile.runtimes=[{others}]") from error

    # One transient bar over every step (rows x runtimes x (1 + rounds) of each table), on a terminal only.
    bar = measurement_progress()
    task = bar.add_task("", total=None)
    started: set[str] = set()

    def progress(guideline: str, done: int, total: int) -> None:
        if bar.disable and guideline not in started:
            # Without the bar (a log file), a line per table says how far the benchmark is. Under the live bar
            # a log line would garble it: the logging handler writes to the terminal past rich's console.
            log.info("benchmarking %s", TITLES[guideline])
        started.add(guideline)
        bar.update(task, description=f"benchmarking {guideline.upper()}", completed=done, total=total, refresh=True)

    # Options left unset (null) take run_guideline's defaults, the paper's settings.
    options = {key: value for key, value in options.items() if value is not None}
    with bar:
        tables = run_guidelines(
            list(guidelines),
            progress=progress,
            device=settings.device,
            runs=settings.runs,
            warmup=settings.warmup,
            runtimes=settings.runtimes,
            calibration_images=settings.calibration_images,
            **options,
        )
    rows = {guideline: [row.as_dict() for row in table] for guideline, table in tables.items()}
    for line in failures([row for table_rows in rows.values() for row in table_rows]):
        log.warning("%s", line)
    for guideline, table_rows in rows.items():
        print_table(
            TITLES[guideline],
            *guideline_table(table_rows, header_break="\n"),
            caption=f"{guideline_caption(table_rows)}\n{verdict_line(guideline, table_rows)}",
        )
    print_table(VERDICT_TITLE, *verdict_table(rows), caption=verdict_caption())
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "guidelines.md", guidelines_markdown(rows))
    flat = [row for table_rows in rows.values() for row in table_rows]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(flat[0]))
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_text(output_dir / "guidelines.csv", text.getvalue())
    log.info("guideline tables written to %s", output_dir / "guidelines.md")
    return rows
