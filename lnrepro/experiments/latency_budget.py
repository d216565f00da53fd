"""`lnrepro-profile experiment=latency_budget profile.budget_ms=<ms>`: for each family, the widest network whose
predicted batch-1 latency fits the budget in every one of `profile.runtimes` (the predictor fitted on this machine,
`lnrepro.profiling.predictor`), measured to confirm, beside the published top-1 of the nearest published variant.

Widths are tried from the narrowest up and the search stops after two in a row over the budget: latency grows with
width, up to the channel rounding of each family, which the second try absorbs.
"""

from __future__ import annotations

import csv
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

from lnrepro.errors import UserInputError
from lnrepro.profiling import ProfileSettings
from lnrepro.profiling.kernels import describe
from lnrepro.profiling.predictor import load_predictor
from lnrepro.utils.files import atomic_write_text
from lnrepro.utils.tables import print_table

log = logging.getLogger(__name__)

#: The experiment's own keys in the profile group (not profile settings): popped before `ProfileSettings`.
CONFIG_KEYS = ("budget_ms", "budget")
COLUMNS = ("family", "width", "side", "runtime", "predicted_ms", "measured_ms", "error_pct", "published", "top1")


@dataclass(frozen=True)
class BudgetOptions:
    families: tuple[str, ...]
    widths: tuple[float, float, float]  # first, last, step
    sides: tuple[int, ...] | None
    measure: bool

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> BudgetOptions:
        from lnrepro.models import list_models

        node = dict(node or {})
        known = ("families", "widths", "sides", "measure")
        unknown = sorted(set(node) - set(known))
        if unknown:
            raise UserInputError(
                f"profile.budget.{unknown[0]} is not a budget option; the options are: {', '.join(known)}"
            )

        def listed(value: Any) -> list:
            return [] if value is None else [value] if isinstance(value, (str, int, float)) else list(value)

        families = tuple(listed(node.get("families")))
        for family in families:
            if family not in list_models():
                raise UserInputError(
                    f"profile.budget.families: unknown model {family!r}; choose from {', '.join(list_models())}"
                )
        try:
            widths = tuple(float(value) for value in listed(node.get("widths")) or (0.25, 2.0, 0.05))
            sides = node.get("sides")
            sides = None if sides is None else tuple(int(side) for side in listed(sides))
        except (TypeError, ValueError) as error:
            raise UserInputError(f"profile.budget: widths and sides must be numbers ({error})") from error
        if len(widths) != 3 or not 0 < widths[0] <= widths[1] or widths[2] <= 0:
            raise UserInputError(
                "profile.budget.widths must be [first, last, step] with 0 < first <= last and step > 0, "
                f"got {list(widths)}"
            )
        if sides is not None:
            if not sides or min(sides) < 16:
                raise UserInputError(
                    f"profile.budget.sides must be input sides of at least 16 pixels, got {list(sides)}"
                )
        return cls(families, widths, sides, bool(node.get("measure", True)))

    def width_grid(self) -> list[float]:
        first, last, step = self.widths
        count = int(round((last - first) / step)) + 1
        return [round(first + index * step, 4) for index in range(count) if first + index * step <= last + 1e-9]


@dataclass
class Choice:
    family: str
    side: int
    width: float | None  # None: not even the narrowest fits
    predicted: dict[str, float]  # runtime -> ms (of the chosen width, or of the narrowest when none fits)
    measured: dict[str, float]
    published: str = ""
    top1: float | None = None


def nearest_published(family: str, width: float, side: int, stem: str) -> tuple[str, float | None]:
    """The published variant of `family` nearest in width (then input side), and its top-1 (%)."""
    from lnrepro.reporting.reference import shipped_table

    table = "cifar10" if stem == "cifar" else "imagenet"
    with open(shipped_table(table), newline="") as file:
        rows = [row for row in csv.DictReader(file) if (row.get("family") or row.get("model")) == family]
    if family == "shufflenet_v1":
        rows = [row for row in rows if row.get("groups") in ("3", "")] or rows
    if not rows:
        return "", None

    def distance(row: dict[str, str]) -> tuple[float, float]:
        return abs(float(row["width"]) - width), abs(int(row.get("resolution") or side) - side)

    row = min(rows, key=distance)
    where = f" @{row['resolution']}" if row.get("resolution") else f" on {row.get('data', 'cifar10')}"
    top1 = float(row["top1"]) if row.get("top1") else None
    return f"{family} w{float(row['width']):g}{where}", top1


def find_widest(
    budget_ms: float,
    options: BudgetOptions,
    runtimes: Sequence[str],
    stem: str,
    num_classes: int,
    sides: Sequence[int],
    threads: int | None,
) -> list[Choice]:
    """Per family and side, the widest width of the grid whose predicted latency fits `budget_ms` in every runtime.
    Refused in one line when nothing fits anywhere, naming the fastest network tried."""
    from lnrepro.models import build_model

    predictors = {runtime: load_predictor(runtime, threads) for runtime in runtimes}
    choices: list[Choice] = []
    fastest: tuple[float, str] | None = None
    for family in options.families:
        for side in sides:
            best: Choice | None = None
            narrowest: dict[str, float] | None = None
            over = 0
            for width in options.width_grid():
                model = build_model(family, width=width, num_classes=num_classes, stem=stem).eval()
                network = describe(model, (3, side, side))
                predicted = {runtime: predictor.predict_ms(network) for runtime, predictor in predictors.items()}
                slowest = max(predicted.values())
                if fastest is None or slowest < fastest[0]:
                    fastest = (slowest, f"{family} width {width:g} at {side}x{side}")
                narrowest = narrowest or predicted
                if slowest <= budget_ms:
                    best, over = Choice(family, side, width, predicted, {}), 0
                else:
                    over += 1
                    if over == 2:
                        break
            choices.append(best or Choice(family, side, None, narrowest or {}, {}))
    if all(choice.width is None for choice in choices):
        assert fastest is not None
        raise UserInputError(
            f"profile.budget_ms={budget_ms:g} is below the fastest network's predicted latency: {fastest[1]} is "
            f"predicted at {fastest[0]:.3f} ms in {', '.join(runtimes)}; raise the budget or narrow the widths"
        )
    return choices


def measure_choices(choices: list[Choice], runtimes: Sequence[str], stem: str, num_classes: int, settings) -> None:
    """Each chosen network's batch-1 latency in each runtime, measured as the predictor's networks were: the best of
    5 block medians of `profile.runs` / 5 passes (`timing.quiet_latency_ms`)."""
    from lnrepro.models import build_model
    from lnrepro.profiling.runtimes import prepare
    from lnrepro.profiling.timing import quiet_latency_ms

    for choice in choices:
        if choice.width is None:
            continue
        model = build_model(choice.family, width=choice.width, num_classes=num_classes, stem=stem).eval()
        input_size = (3, choice.side, choice.side)
        for runtime in runtimes:
            with tempfile.TemporaryDirectory(prefix="lnrepro-budget-") as scratch:
                runner = prepare(runtime, model, input_size, workdir=scratch)
                choice.measured[runtime] = quiet_latency_ms(
                    model, input_size, blocks=5, runs=max(1, settings.runs // 5), warmup=settings.warmup, run=runner
                )


def profile_budget(
    budget_ms: Any, options: BudgetOptions, settings: ProfileSettings, data: Mapping[str, Any], output_dir: Path
) -> dict[str, Any]:
    """The experiment: find, measure, print and write budget.csv / budget.md; returns metrics.json's row."""
    if isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float)) or not budget_ms > 0:
        raise UserInputError(f"profile.budget_ms must be a positive number of milliseconds, got {budget_ms!r}")
    if not settings.runtimes:
        raise UserInputError("profile.runtimes is empty: name the runtimes the budget holds in")
    if not options.families:
        raise UserInputError("profile.budget.families is empty: name the families to search")
    stem, classes = str(data["stem"]), int(data["num_classes"])
    sides = list(options.sides or (int(data["image_size"]),))
    choices = find_widest(float(budget_ms), options, settings.runtimes, stem, classes, sides, settings.threads)
    for choice in choices:
        if choice.width is not None:
            choice.published, choice.top1 = nearest_published(choice.family, choice.width, choice.side, stem)
    if options.measure and settings.measure:
        measure_choices(choices, settings.runtimes, stem, classes, settings)
    rows = budget_rows(choices, settings.runtimes)
    write_budget(output_dir, rows, float(budget_ms))
    print_table(
        f"the widest network under {float(budget_ms):g} ms (batch 1) in {', '.join(settings.runtimes)}",
        [(title, title in ("family", "runtime", "published")) for title in COLUMNS],
        [[_cell(row[column]) for column in COLUMNS] for row in rows],
        caption="predicted by the latency predictor fitted on this machine; published: the nearest published variant",
    )
    metrics: dict[str, Any] = {"budget/budget_ms": float(budget_ms), "budget/runtimes": ",".join(settings.runtimes)}
    for choice in choices:
        metrics[f"budget/{choice.family}_{choice.side}_width"] = choice.width
    return metrics


def budget_rows(choices: Sequence[Choice], runtimes: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for choice in choices:
        for runtime in runtimes:
            predicted, measured = choice.predicted.get(runtime), choice.measured.get(runtime)
            rows.append(
                {
                    "family": choice.family,
                    "width": choice.width if choice.width is not None else "none fits",
                    "side": choice.side,
                    "runtime": runtime,
                    "predicted_ms": predicted,
                    "measured_ms": measured,
                    "error_pct": 100 * (predicted / measured - 1) if predicted and measured else None,
                    "published": choice.published,
                    "top1": choice.top1,
                }
            )
    return rows


def _cell(value: Any) -> str:
    from lnrepro.reporting.formatting import figure

    return figure(value) if value is None or isinstance(value, float) else str(value)


def write_budget(output_dir: Path, rows: Sequence[Mapping[str, Any]], budget_ms: float) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    text = StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: "" if row[key] is None else row[key] for key in COLUMNS} for row in rows)
    atomic_write_text(output_dir / "budget.csv", text.getvalue())
    lines = [f"Widest network under {budget_ms:g} ms (batch 1)", "", "| " + " | ".join(COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    lines += ["| " + " | ".join(_cell(row[key]) for key in COLUMNS) + " |" for row in rows]
    atomic_write_text(output_dir / "budget.md", "\n".join(lines) + "\n")
