"""Find the `metrics.json` of runs and multiruns and turn each into one report row."""

from __future__ import annotations

import math
import re
import reprlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnrepro import schema
from lnrepro.errors import UserInputError
from lnrepro.schema import read_metrics


class ReportError(UserInputError):
    """Nothing to report, or a path that cannot be read: one line for the user."""


def _natural_key(path: Path) -> list:
    # multiruns/<time>/10 after multiruns/<time>/9
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_metrics_files(paths: list[str | Path]) -> list[Path]:
    """Every metrics.json under the given directories (recursively), or the given files themselves."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise ReportError(
                f"{path} does not exist: give run directories such as logs/train/runs/<time> "
                f"or logs/train/multiruns/<time>"
            )
        if path.is_file():
            found.append(path)
        else:
            found.extend(sorted(path.rglob(schema.FILENAME), key=_natural_key))
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        where = ", ".join(str(p) for p in paths) or "(no directory given)"
        raise ReportError(
            f"no metrics.json found under {where}: point lnrepro-report at a run directory "
            f"(logs/train/runs/<time>) or a multirun (logs/train/multiruns/<time>) that has finished"
        )
    return unique


def _number(value: Any) -> float | None:
    """A number from a value that may spell one (`input_size`'s "224"); figures are checked by `_check_types`."""
    if isinstance(value, bool) or value is None:  # a flag is no figure, though float(True) would be 1.0
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


TEXT, NUMBER, WHOLE_NUMBER = "text", "a number", "a whole number"


def _holds(kind: str, value: Any) -> bool:
    if kind == TEXT:
        return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, (int, float)):  # a flag or "0.8" is no figure
        return False
    return math.isfinite(value) and (kind == NUMBER or float(value).is_integer())


#: Keys that name a run and match it to a published row: a run with one of the wrong type is left out of the report.
IDENTITY_KEYS = {
    schema.MODEL: TEXT,
    schema.CONV: TEXT,
    schema.STEM: TEXT,
    schema.DATA: TEXT,
    schema.WIDTH: NUMBER,
    schema.GROUPS: WHOLE_NUMBER,
}
SHOWN_AS_MISSING = "left out of the report (shown as '-')"
NOT_AVERAGED = "this run is not averaged with the other seeds of its recipe (it could not be told from a copy)"
#: The other keys the report reads: (what each must hold, what a run loses when it holds something else). Such a key
#: is read as missing (`schema_version` as 0), so that no table, mean or plot sees its value.
FIGURE_KEYS = {
    schema.TEST_ACC: (NUMBER, "this run is left out of the top-1 figures (its val/acc_best does not stand in)"),
    schema.VAL_ACC_BEST: (NUMBER, "not used in place of a missing test/acc"),
    schema.SEED: (WHOLE_NUMBER, NOT_AVERAGED),
    schema.CONFIG_DIGEST: (TEXT, NOT_AVERAGED),
    schema.SCHEMA: (WHOLE_NUMBER, "read as version 0 (accuracies before true top-1, marked ‡)"),
    **{
        key: (NUMBER, SHOWN_AS_MISSING)
        for key in (
            schema.PARAMS,
            schema.PARAMS_CONV,
            schema.MACS,
            schema.MACS_CONV,
            schema.FLOPS,
            schema.FLOPS_CONV,
            schema.TRAIN_EPOCH_S,
            schema.VAL_EPOCH_S,
            schema.TRAIN_IMGS_PER_S,
            schema.MEMORY_PEAK_MIB,
            schema.MEMORY_INFER_PEAK_MIB,
        )
    },
    **{
        pattern(runtime): (NUMBER, SHOWN_AS_MISSING)
        for runtime in schema.RUNTIMES
        for pattern in (schema.latency_key, schema.latency_p90_key, schema.throughput_key, schema.accuracy_key)
    },
}


def _shown(value: Any) -> str:
    return reprlib.repr(value)  # cut short: the line naming it stays one line


def _check_types(path: Path, metrics: dict[str, Any]) -> dict[str, str]:
    """Each key the report reads that holds a value of the wrong type (a string, dict, list or flag where a number
    is expected, NaN or infinity) -> the line that names it; that key is then read as missing, in `metrics` itself.
    Raises ValueError for an identity key (`IDENTITY_KEYS`). null is a missing value, not a wrong one."""
    for key, kind in IDENTITY_KEYS.items():
        value = metrics.get(key)
        if value is not None and not _holds(kind, value):
            raise ValueError(f"{key} is {_shown(value)}, not {kind}: the run cannot be named or matched")
    wrong = {}
    for key, (kind, consequence) in FIGURE_KEYS.items():
        value = metrics.get(key)
        if value is None or _holds(kind, value):
            continue
        expected = "a finite number" if isinstance(value, float) else kind
        wrong[key] = f"{path}: {key} is {_shown(value)}, not {expected}: {consequence}"
        metrics[key] = 0 if key == schema.SCHEMA else None  # what read_metrics gives a file without a version
    return wrong


def input_resolution(metrics: dict[str, Any]) -> int | None:
    """The input side in pixels: `input_size` as 224, [3, 224, 224], "224x224" or "1x3x224x224"; else by data."""
    size = metrics.get(schema.INPUT_SIZE)
    if isinstance(size, (list, tuple)) and size:
        size = size[-1]
    if isinstance(size, str):
        digits = re.findall(r"\d+", size)
        size = digits[-1] if digits else None
    number = _number(size)
    if number:
        return int(number)
    return {"imagenet": 224, "cifar10": 32}.get(str(metrics.get(schema.DATA)))


@dataclass
class Run:
    """One metrics.json, with the report's figures in the units the table shows."""

    path: Path
    metrics: dict[str, Any]
    values: dict[str, float | None] = field(default_factory=dict)
    top1_source: str | None = None  # "test", or "val" for a run that has no test/acc (the report marks it)
    wrong_types: dict[str, str] = field(default_factory=dict)  # key -> the line naming its value (`_check_types`)
    variant: str = ""  # the family options that tell this run from others of the same name (`label_variants`)

    @property
    def model(self) -> str:
        return str(self.metrics.get(schema.MODEL) or "?")

    @property
    def conv(self) -> str | None:
        return self.metrics.get(schema.CONV) or None

    @property
    def groups(self) -> int | None:
        value = _number(self.metrics.get(schema.GROUPS))
        return int(value) if value is not None else None

    @property
    def width(self) -> float:
        value = _number(self.metrics.get(schema.WIDTH))
        return 1.0 if value is None else value

    @property
    def stem(self) -> str | None:
        return self.metrics.get(schema.STEM) or None

    @property
    def name(self) -> str:
        """vgg16_conv, resnet34_dwpw, ghostnet_ghost (the ghost_vs_dwpw table's names), shufflenet_v1_g3_x0.5, ..."""
        name = self.model
        if self.conv:
            name += "_" + ("conv" if self.conv == "standard" else self.conv)
        if self.groups is not None:
            name += f"_g{self.groups}"
        if self.width != 1.0:
            name += f"_x{self.width:g}"
        return name

    @property
    def label(self) -> str:
        """The row's name in tables and plots: `name`, plus the options that set it apart where needed."""
        return f"{self.name} {self.variant}" if self.variant else self.name


def label_variants(runs: list[Run]) -> None:
    """Runs of one name (`ghostnet_ghost`) built with different family options (`model/ghost_cheap`: learned and
    zeros) get those options in their label (`ghostnet_ghost ghost_cheap=zeros`), so that an ablation's rows can be
    told apart; options equal across the runs of a name are left out."""
    by_name: dict[tuple, list[Run]] = {}
    for run in runs:
        by_name.setdefault((run.name, run.stem), []).append(run)
    prefix = schema.model_option_key("")
    for same in by_name.values():
        keys = sorted({key for run in same for key in run.metrics if key.startswith(prefix)})
        differing = [key for key in keys if len({repr(run.metrics.get(key)) for run in same}) > 1]
        for run in same:
            run.variant = ",".join(f"{key[len(prefix) :]}={run.metrics.get(key)}" for key in differing)


def warn(lines: list[str]) -> None:
    """The report's warnings on stderr, one line each (report.md repeats them as notes)."""
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def read_run(path: Path, conv_only: bool = False) -> Run:
    """One metrics.json (any schema version) as a report row's figures. `conv_only`: params and FLOPs of Conv2d
    layers only (as the ghost_vs_dwpw table counts them). Keys of the wrong type are read as missing and named in
    `Run.wrong_types`; raises ValueError for a file that cannot be read as a run."""
    metrics = read_metrics(path)
    wrong_types = _check_types(path, metrics)
    get = lambda key: _number(metrics.get(key))  # noqa: E731
    top1, source = get(schema.TEST_ACC), "test"
    if top1 is None and schema.TEST_ACC not in wrong_types:  # no test at all: validation stands in, marked
        top1, source = get(schema.VAL_ACC_BEST), "val"
    macs = get(schema.MACS_CONV if conv_only else schema.MACS)
    flops = get(schema.FLOPS_CONV if conv_only else schema.FLOPS)
    if flops is None and macs is not None:
        flops = 2 * macs
    run = Run(path=path, metrics=metrics, top1_source=source if top1 is not None else None, wrong_types=wrong_types)
    run.values = {
        "params": get(schema.PARAMS_CONV if conv_only else schema.PARAMS),
        "flops": flops,
        "train_s_per_epoch": get(schema.TRAIN_EPOCH_S),
        "val_s": get(schema.VAL_EPOCH_S),
        "infer_ms_per_image": get(schema.LATENCY_MS),
        "deployed_ms_per_image": get(schema.latency_key("onnxruntime")),
        "memory_mib": get(schema.MEMORY_PEAK_MIB),
        "top1": None if top1 is None else 100.0 * top1,
    }
    return run


def load_runs(paths: list[str | Path], conv_only: bool = False) -> tuple[list[Run], list[str]]:
    """The runs under `paths`, and one line for each file left out and each key of the wrong type (the report's
    warnings: a run killed while writing, a file not ours, a hand-edited figure)."""
    runs, problems = [], []
    for file in find_metrics_files(paths):
        try:
            run = read_run(file, conv_only=conv_only)
        except (OSError, ValueError) as error:
            problems.append(f"skipping {file}: {error}")
            continue
        runs.append(run)
        problems.extend(run.wrong_types.values())
    if not runs:
        warn(problems)
        raise ReportError(f"none of the metrics.json files under {', '.join(map(str, paths))} could be read")
    label_variants(runs)
    return runs, problems
