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

FLOPs = 2 x multiply-adds, as everywhere in this project; MAC (memory access cost) is in bytes (fp32: 4 per element).
"""

from __future__ import annotations

import csv
import io
import logging
import math
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


def table_rows(guideline: str) -> int:
    """How many rows `settings` gives the guideline's table, without building its networks."""
    rows = {"g1": G1_RATIOS, "g2": G2_GROUPS, "g3": G3_SETTINGS, "g4": G4_SETTINGS}
    if guideline not in rows:
        raise unknown_guideline(guideline)
    return len(rows[guideline])


def paper_figures(guideline: str, base: int, size: int, blocks: int) -> dict[str, tuple | None]:
    """The paper's figures for this table where `base` is one of its channel settings (x1, x2, x4) and `size` and
    `blocks` are the paper's, else None."""
    same_setup = size == PAPER_INPUT and blocks == PAPER_BLOCKS
    return {
        platform: by_base.get(base) if same_setup else None for platform, by_base in PAPER_FIGURES[guideline].items()
    }


@dataclass
class GuidelineRow:
    guideline: str
    setting: str
    channels: str
    flops: int  # of one image, FLOPs = 2 x multiply-adds
    mac_bytes: int  # memory access cost of the convolutions, one image
    elementwise_bytes: int  # memory traffic of ReLU and additions, one image (left out of MAC)
    images_per_s: float  # median over the rounds
    spread: float  # interquartile range of the rounds' images/s over their median
    ms_per_batch: float
    relative_speed: float  # images/s over the table's first row's
    paper_gpu: float | None  # batches/s, batch 8, GTX 1080Ti
    paper_arm: float | None  # images/s, batch 1, ARM
    paper_gpu_first: float | None  # the paper's figure for the table's first row (for relative speed)
    paper_arm_first: float | None
    context: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(row.pop("context"))
        return row


ROUNDS = 5  # timing rounds per table by default


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
    timed: Callable[[], None] | None = None,
) -> list[GuidelineRow]:
    """Build, count and time every row of one guideline's table. `base` defaults to the paper's setting for
    `platform` ("gpu" or "arm"; by default "gpu" on CUDA, "arm" otherwise) times `scale`; `batch_size` to the
    paper's (8 for "gpu", 1 for "arm"). Speed is `inference_throughput` (eval mode, no_grad) of `runs` batches,
    measured in `rounds` rounds that visit every row in turn (the first round after `warmup` batches per row);
    a row's images/s is its median over the rounds and `spread` their interquartile range over the median.
    Interleaving matters because the rows are compared with each other: a change of the machine's load during
    the table then hits every row alike instead of whichever row was being timed. `timed` is called after each
    row's timing in each round (rows x rounds calls), between measurements."""
    platform = platform or ("gpu" if torch.device(device).type == "cuda" else "arm")
    if platform not in PAPER_BASES:
        raise UserInputError(f"profile.guideline.platform must be 'gpu', 'arm' or null, got {platform!r}")
    if rounds < 1 or runs < 1:
        raise UserInputError(
            f"profile.guideline.rounds and profile.runs must be at least 1, got rounds={rounds}, runs={runs}"
        )
    base = int(base or max(1, round(PAPER_BASES[platform][guideline] * scale)))
    batch_size = int(batch_size or PAPER_BATCH[platform])
    paper = paper_figures(guideline, base, size, blocks)
    table = settings(guideline, base, size, blocks)
    for setting in table:
        setting.network.to(device).eval()
    speeds: list[list[float]] = [[] for _ in table]
    for round_index in range(rounds):
        for setting, row_speeds in zip(table, speeds):
            row_speeds.append(
                inference_throughput(
                    setting.network,
                    batch_size,
                    setting.input_shape,
                    runs=runs,
                    warmup=warmup if round_index == 0 else 1,
                ).images_per_s
            )
            if timed:
                timed()
    rows: list[GuidelineRow] = []
    first = percentile(speeds[0], 50)
    for index, (setting, row_speeds) in enumerate(zip(table, speeds)):
        net, speed = setting.network, percentile(row_speeds, 50)
        macs = count_macs(net, setting.input_shape)  # fp32: 4 bytes per element in mac_bytes
        rows.append(
            GuidelineRow(
                guideline=guideline,
                setting=setting.name,
                channels=setting.channels,
                flops=macs.flops,
                mac_bytes=macs.mac_bytes,
                elementwise_bytes=elementwise_bytes(net, setting.input_shape),
                images_per_s=speed,
                spread=(percentile(row_speeds, 75) - percentile(row_speeds, 25)) / speed,
                ms_per_batch=1000 * batch_size / speed,
                relative_speed=speed / first,
                paper_gpu=paper["gpu"][index] if paper["gpu"] else None,
                paper_arm=paper["arm"][index] if paper["arm"] else None,
                paper_gpu_first=paper["gpu"][0] if paper["gpu"] else None,
                paper_arm_first=paper["arm"][0] if paper["arm"] else None,
                context=measurement_context(net, batch_size, setting.input_shape)
                | {"blocks": blocks, "runs": runs, "rounds": rounds},
            )
        )
    return rows


def run_guidelines(
    guidelines=GUIDELINES, progress: Callable[[str, int, int], None] | None = None, **kwargs
) -> dict[str, list[GuidelineRow]]:
    """`run_guideline` for each of `guidelines`; keyword arguments go to each (pass `scale` rather than `base`:
    each table has its own paper setting). Every name is checked before the first table is measured.
    `progress(guideline, done, total)` is called as each table starts and after each of its timings: `done` of
    the `total` timings of all tables (rows x rounds each), e.g. for a progress bar."""
    unknown = [g for g in guidelines if g not in GUIDELINES]
    if unknown:
        raise unknown_guideline(unknown[0])
    total = kwargs.get("rounds", ROUNDS) * sum(table_rows(g) for g in guidelines)
    tables, done = {}, 0
    for guideline in guidelines:
        if progress:
            progress(guideline, done, total)

        def timed(guideline: str = guideline) -> None:
            nonlocal done
            done += 1
            progress(guideline, done, total)

        tables[guideline] = run_guideline(guideline, timed=timed if progress else None, **kwargs)
    return tables


# --- the tables, printed and written as guidelines.md / guidelines.csv (lnrepro-profile experiment=...) -------
def paper_cell(value: float | None, first: float | None) -> str | None:
    """The paper's figure with its speed relative to the table's first row: what can be compared across devices."""
    return None if value is None else f"{value:g} ({value / first:.2f})"


# (column title, left-aligned, cell text of a row dict or None for "-") of the guideline tables; guidelines.csv
# also has ms_per_batch and the measurement context.
GUIDELINE_COLUMNS = [
    ("setting", True, lambda r: r["setting"]),
    ("channels", True, lambda r: r["channels"]),
    ("FLOPs (M)", False, lambda r: f"{r['flops'] / 1e6:.1f}"),
    ("MAC (MB)", False, lambda r: f"{r['mac_bytes'] / 2**20:.2f}"),
    ("elem-wise (MB)", False, lambda r: f"{r['elementwise_bytes'] / 2**20:.2f}"),
    ("img/s", False, lambda r: f"{r['images_per_s']:.1f}"),
    ("spread", False, lambda r: f"{r['spread']:.0%}"),
    ("relative", False, lambda r: f"{r['relative_speed']:.2f}"),
    ("paper GPU batch/s (rel.)", False, lambda r: paper_cell(r["paper_gpu"], r["paper_gpu_first"])),
    ("paper ARM img/s (rel.)", False, lambda r: paper_cell(r["paper_arm"], r["paper_arm_first"])),
]


GUIDELINE_TABLE_COLUMNS = [(title, left) for title, left, _ in GUIDELINE_COLUMNS]


def guideline_cells(row: dict[str, Any]) -> list[str]:
    return [cell if (cell := text(row)) is not None else "-" for _, _, text in GUIDELINE_COLUMNS]


def guideline_caption(rows: list[dict[str, Any]]) -> str:
    first = rows[0]
    return (
        f"one image: FLOPs = 2 x multiply-adds, MAC = conv inputs + outputs + weights (fp32); speed at batch "
        f"{first['batch_size']}, input {first['input_size']} (first row), {first['blocks']} blocks, median of "
        f"{first['rounds']} interleaved rounds of {first['runs']} batches (spread: their interquartile range / "
        f"median); "
        f"{first['device']}, {first['dtype']}, threads {first['threads']}, torch {first['torch_version']}"
    )


def guidelines_markdown(tables: dict[str, list[dict[str, Any]]]) -> str:
    parts = []
    for guideline, rows in tables.items():
        parts.append(f"### {TITLES[guideline]}\n")
        parts.extend(markdown_table(GUIDELINE_TABLE_COLUMNS, [guideline_cells(row) for row in rows]))
        parts.append(f"\n{guideline_caption(rows)}\n")
    return "\n".join(parts)


#: This experiment's keys in the `profile` config node, set by conf/experiment/shufflenetv2_guidelines.yaml (which
#: documents them): `guidelines`, the tables to run, and `guideline`, their options (`run_guideline`'s keyword
#: arguments). They are not `ProfileSettings`: lnrepro-profile takes them out of the node and hands them here.
CONFIG_KEYS = ("guidelines", "guideline")


def profile_guidelines(
    guidelines: Sequence[str], options: Mapping[str, Any], settings: ProfileSettings, output_dir: Path
) -> dict[str, Any]:
    """ShuffleNet V2's guideline benchmarks `guidelines` (conf/experiment/shufflenetv2_guidelines.yaml) with
    `options` (`profile.guideline`) on `settings.device`, timed with `settings.runs` and `settings.warmup`: one table
    each, printed and written to guidelines.md and guidelines.csv in the run directory; returns {guideline: rows}."""
    from lnrepro.utils.progress import measurement_progress

    # One transient bar over every timing (rows x rounds of each table), on a terminal only.
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
            **options,
        )
    rows = {guideline: [row.as_dict() for row in table] for guideline, table in tables.items()}
    for guideline, table_rows in rows.items():
        print_table(
            TITLES[guideline],
            GUIDELINE_TABLE_COLUMNS,
            [guideline_cells(row) for row in table_rows],
            caption=guideline_caption(table_rows),
        )
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
