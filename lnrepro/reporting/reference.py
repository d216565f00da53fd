"""Published tables (reference CSVs) and how a run finds its row in them.

Two layouts are recognised by their header:

- the ghost_vs_dwpw table, seed document 003's CIFAR-10 Ghost vs DW-PW comparison (`ghost_vs_dwpw.csv`:
  model,stem,params,flops,train_s_per_epoch,...): a run matches the row named `<model>_<conv>` (conv `standard` is
  called `conv`, as document 003 does) with the same `stem`; params and FLOPs are then the conv-only counts
  (`params_conv`, `flops_conv`), as document 003 counts them;
- published ImageNet figures (`imagenet_published.csv`: family,width,groups,resolution,...): a run matches the row
  with its model as `family`, the same `width`, the same `groups` (empty in the CSV = the run has none) and a
  `resolution` equal to the run's input side (`input_size`, else 224 for data=imagenet, 32 for cifar10).

Any other CSV with a `model` column (published CIFAR-10 ports, the ablation tables, a user's own) matches a run whose
row name or model equals it, with the same `width` when there is such a column, and the same value in every other
column that names something the run recorded: `conv`, `groups`, `stem`, `data`, or a family option (`shallow`,
`shuffle`, `ghost_ratio`...: the run's `model/<option>`); an empty cell matches anything. When several rows match,
the first one is used. `macs_m` (millions of multiply-adds) is shown as FLOPs = 2 x multiply-adds; `gpu_memory_gb`
as MiB (x 1024).
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from lnrepro import schema
from lnrepro.reporting.collect import ReportError, Run, input_resolution

SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def parse_amount(text: str | None) -> float | None:
    """'14.7M' -> 14.7e6, '877K' -> 877e3, '2.32G' -> 2.32e9, '83.9' -> 83.9, '' -> None."""
    if text is None:
        return None
    text = text.strip().replace(",", "")
    match = re.fullmatch(r"([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*([KMGT]?)B?", text, flags=re.IGNORECASE)
    if not match:
        return None
    return float(match.group(1)) * SUFFIX[match.group(2).upper()]


#: Columns a run records under the same name; any other condition column is a family option, `model/<column>`.
RUN_FACT_COLUMNS = (schema.CONV, schema.GROUPS, schema.STEM, schema.DATA)


#: Columns of a published table that name a row, hold its figures or describe it; the rest are what it was run with.
NOT_OPTION_COLUMNS = {
    "model", "family", "width", "conv", "groups", "stem", "data", "resolution", "params", "flops", "macs_m", "top1",
    "train_s_per_epoch", "val_s", "infer_ms_per_image", "memory_mib", "memory_mb", "gpu_memory_gb", "source", "note",
}  # fmt: skip


def _conditions(run: Run, row: dict[str, str]) -> list[tuple[str, str]]:
    """(metrics key, the row's cell) for each non-empty cell of `row` that names something `run` recorded."""
    found = []
    for column, cell in row.items():
        if column in ("model", "width") or not cell or not cell.strip():
            continue
        key = column if column in RUN_FACT_COLUMNS else schema.model_option_key(column)
        if key in run.metrics:
            found.append((key, cell.strip()))
    return found


def _same(cell: str, value: object) -> bool:
    """A CSV cell against a recorded value: booleans as true/false, numbers as numbers, the rest as text."""
    if isinstance(value, bool):
        return cell.lower() == str(value).lower()
    if isinstance(value, (int, float)):
        number = parse_amount(cell)
        return number is not None and abs(number - value) < 1e-9
    return cell == str(value)


@dataclass
class Reference:
    path: Path
    kind: str  # "ghost_vs_dwpw" | "imagenet" | "generic"
    rows: list[dict[str, str]]

    @property
    def conv_only(self) -> bool:
        return self.kind == "ghost_vs_dwpw"

    @property
    def how(self) -> str:
        return {
            "ghost_vs_dwpw": "row `<model>_<conv>` (standard = `conv`) with the same stem; params and FLOPs count "
            "Conv2d layers only, as the table does",
            "imagenet": "family = model, same width, same groups, resolution = the run's input side",
            "generic": "`model` = the row name or the model, the same width, and the same value in each column the "
            "run recorded (conv, groups, stem, data, model/<option>); the first matching row",
        }[self.kind]

    def label(self, row: dict[str, str]) -> str:
        if self.kind == "ghost_vs_dwpw":
            return row.get("model", "?")
        name = row.get("family") or row.get("model") or "?"
        if self.kind == "generic" and row.get("conv"):
            name += "_" + ("conv" if row["conv"] == "standard" else row["conv"])
        if row.get("groups"):
            name += f"_g{row['groups']}"
        if row.get("width") and float(row["width"]) != 1.0:
            name += f"_x{float(row['width']):g}"
        if self.kind == "imagenet" and row.get("resolution") and row["resolution"] != "224":
            name += f"@{row['resolution']}"
        if self.kind == "generic":  # the ablation's switches tell its rows apart
            name += "".join(
                f" {column}={cell}" for column, cell in row.items() if column in self.option_columns and cell
            )
        return name

    @property
    def option_columns(self) -> list[str]:
        """Columns that are neither the row's name, width, figures nor description: its family options."""
        columns = list(self.rows[0]) if self.rows else []
        return [c for c in columns if c not in NOT_OPTION_COLUMNS]

    def values(self, row: dict[str, str]) -> dict[str, float | None]:
        """The row's figures in the report's columns and units."""
        out: dict[str, float | None] = {
            "params": parse_amount(row.get("params")),
            "flops": parse_amount(row.get("flops")),
            "train_s_per_epoch": parse_amount(row.get("train_s_per_epoch")),
            "val_s": parse_amount(row.get("val_s")),
            "infer_ms_per_image": parse_amount(row.get("infer_ms_per_image")),
            "memory_mib": None,
            "top1": parse_amount(row.get("top1")),
        }
        if out["flops"] is None and parse_amount(row.get("macs_m")) is not None:
            out["flops"] = 2 * parse_amount(row["macs_m"]) * 1e6
        if parse_amount(row.get("gpu_memory_gb")) is not None:
            out["memory_mib"] = parse_amount(row["gpu_memory_gb"]) * 1024
        for column in ("memory_mib", "memory_mb"):  # a CSV may name it either way; both are read as MiB
            if parse_amount(row.get(column)) is not None:
                out["memory_mib"] = parse_amount(row[column])
                break
        return out

    def _matches(self, run: Run, row: dict[str, str]) -> bool:
        same_width = lambda: not row.get("width") or abs(float(row["width"]) - run.width) < 1e-9  # noqa: E731
        if self.kind == "ghost_vs_dwpw":
            return row.get("model") == run.name and (not row.get("stem") or row["stem"] == run.stem)
        if self.kind == "imagenet":
            groups = int(row["groups"]) if row.get("groups") else None
            resolution = int(row["resolution"]) if row.get("resolution") else None
            return (
                row.get("family") == run.model
                and same_width()
                and groups == run.groups
                and (resolution is None or resolution == input_resolution(run.metrics))
            )
        return (
            row.get("model") in (run.name, run.model)
            and same_width()
            and all(_same(cell, run.metrics[key]) for key, cell in _conditions(run, row))
        )

    def match(self, run: Run) -> int | None:
        """Index of the first row that describes this run, or None."""
        for index, row in enumerate(self.rows):
            if self._matches(run, row):
                return index
        return None


#: Published tables shipped in the package (lnrepro/reference/), by the name `--reference` takes:
#: name -> (file, what it holds and how runs match it).
SHIPPED_TABLES = {
    "ghost_vs_dwpw": (
        "ghost_vs_dwpw.csv",
        "seed document 003's CIFAR-10 Ghost vs DW-PW table (rows <model>_<conv> + stem)",
    ),
    "imagenet": ("imagenet_published.csv", "published ImageNet figures (family, width, groups, resolution)"),
    "cifar10": ("cifar10_published.csv", "published CIFAR-10 figures of CIFAR-adapted ports (model, width)"),
    "mobilenet_v1_table4": (
        "mobilenet_v1_table4.csv",
        "MobileNet V1's Table 4: depthwise separable vs full convolutions (model, width, conv)",
    ),
    "mobilenet_v1_table5": (
        "mobilenet_v1_table5.csv",
        "MobileNet V1's Table 5: narrow (width 0.75) vs shallow (model, width, conv, shallow)",
    ),
    "ghostnet_table2": (
        "ghostnet_table2.csv",
        "GhostNet paper's Table 2: Ghost-VGG-16 on CIFAR-10 by cheap kernel d (conv, ghost_ratio, ghost_kernel)",
    ),
    "ghostnet_table3": (
        "ghostnet_table3.csv",
        "GhostNet paper's Table 3: Ghost-VGG-16 on CIFAR-10 by ratio s (conv, ghost_ratio, ghost_kernel)",
    ),
    "ghostnet_table4": (
        "ghostnet_table4.csv",
        "GhostNet paper's Table 4: VGG-16 / ResNet-56 with and without Ghost modules on CIFAR-10, pruning baselines",
    ),
    "mobilenet_v2_figure6": (
        "mobilenet_v2_figure6.csv",
        "MobileNet V2's Figure 6 ablations: linear bottleneck, shortcut placement (no accuracies printed)",
    ),
    "shufflenet_v1_table3": (
        "shufflenet_v1_table3.csv",
        "ShuffleNet V1's Table 3: width x groups with and without channel shuffle (model, width, groups, shuffle)",
    ),
}


#: Names `--reference` took before -> the table's name now. Each still works, with one warning on stderr; it is not
#: listed among the tables. `seed` was the ghost_vs_dwpw table, a name that also read as the random seed.
RENAMED_TABLES = {"seed": "ghost_vs_dwpw"}


def shipped_table(name: str) -> Path:
    """The path of a shipped published table, by its `SHIPPED_TABLES` name (or a `RENAMED_TABLES` one) or its file
    name."""
    from importlib.resources import files

    if name in RENAMED_TABLES:
        print(
            f"warning: --reference {name} is deprecated; use --reference {RENAMED_TABLES[name]} (the same table)",
            file=sys.stderr,
        )
        name = RENAMED_TABLES[name]
    file = SHIPPED_TABLES[name][0] if name in SHIPPED_TABLES else name
    path = Path(str(files("lnrepro.reference").joinpath(file)))
    if not path.is_file():
        raise ReportError(f"no published table named {name!r}: use one of {', '.join(SHIPPED_TABLES)} or a CSV path")
    return path


def load_reference(path: str | Path) -> Reference:
    """A published table: a `SHIPPED_TABLES` name (`ghost_vs_dwpw`, `imagenet`, `cifar10`) or the path of a CSV."""
    if str(path) in SHIPPED_TABLES or str(path) in RENAMED_TABLES:
        path = shipped_table(str(path))
    path = Path(path).expanduser()
    try:
        with open(path, newline="") as file:
            rows = list(csv.DictReader(file))
    except OSError as error:
        raise ReportError(f"reference table {path} cannot be read ({error.strerror or error})") from error
    columns = set(rows[0]) if rows else set()
    if {"model", "stem", "train_s_per_epoch"} <= columns:
        kind = "ghost_vs_dwpw"
    elif {"family", "width", "resolution"} <= columns:
        kind = "imagenet"
    elif "model" in columns:
        kind = "generic"
    else:
        raise ReportError(
            f"reference table {path} has no `model` or `family` column (header: "
            f"{', '.join(sorted(columns)) or 'empty'})"
        )
    return Reference(path=path, kind=kind, rows=rows)
