"""Several seeds of one recipe as one report row: mean top-1, its spread, a 95% interval and a verdict.

Runs belong together when their `config_digest` (lnrepro.schema: the config without seed, paths, loggers and
profile settings) is equal; two runs with the same digest and the same seed are one run copied, counted once
(`drop_copies`). A row's top-1 comes from one split (`row_split`): test, or validation where none of its runs
tested. The interval is Student's t half-width, t(0.975, n-1) x s / sqrt(n), with the sample standard deviation s;
it is empty with one seed. The verdict compares the mean with a published figure:
`reproduced` when |mean - published| <= max(ci95, tolerance), else `below` or `above`.

Two rows of one network that differ in one design choice (an ablation: VGG16 `dwpw` vs `pwdw`) are compared by
`compare`: the difference of their means, whether their 95% intervals overlap, and Welch's t-test.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace

from lnrepro import schema
from lnrepro.reporting.collect import Run

DEFAULT_TOLERANCE = 1.0  # points of top-1: what two careful reproductions of one recipe commonly differ by


@dataclass(frozen=True)
class SeedStats:
    n_seeds: int
    top1_mean: float | None
    top1_std: float | None  # sample standard deviation, None with fewer than two seeds
    top1_ci95: float | None  # Student t half-width, None with fewer than two seeds
    seeds: tuple = ()
    top1_int8_mean: float | None = None  # mean top-1 of the same weights in ONNX Runtime int8, where measured

    def verdict(self, published: float | None, tolerance: float = DEFAULT_TOLERANCE) -> str | None:
        if published is None or self.top1_mean is None:
            return None
        if abs(self.top1_mean - published) <= max(self.top1_ci95 or 0.0, tolerance):
            return "reproduced"
        return "below" if self.top1_mean < published else "above"


def seed_stats(top1: list[float], seeds: tuple = ()) -> SeedStats:
    if not top1:
        return SeedStats(0, None, None, None, seeds)
    mean = statistics.fmean(top1)
    if len(top1) < 2:
        return SeedStats(1, mean, None, None, seeds)
    from scipy.stats import t

    std = statistics.stdev(top1)
    return SeedStats(len(top1), mean, std, float(t.ppf(0.975, len(top1) - 1)) * std / math.sqrt(len(top1)), seeds)


SPLITS = ("test", "val", None)  # where a run's top-1 comes from, the better first


def drop_copies(runs: list[Run]) -> tuple[list[Run], list[str]]:
    """Runs with the same `config_digest` and seed are one run found twice (a run directory copied, a multirun
    given twice under two names): one is kept, the one whose top-1 comes from the better split, else the first;
    one line for each set of copies names them and the one kept."""
    copies: dict[tuple, list[Run]] = {}
    for run in runs:
        digest, seed = run.metrics.get(schema.CONFIG_DIGEST), run.metrics.get(schema.SEED)
        if digest is not None and seed is not None:  # a run without either cannot be told from another
            copies.setdefault((digest, seed), []).append(run)
    left_out, lines = set(), []
    for (digest, seed), same in copies.items():
        if len(same) < 2:
            continue
        kept = min(same, key=lambda run: SPLITS.index(run.top1_source))
        left_out.update(id(run) for run in same if run is not kept)
        lines.append(
            f"{', '.join(str(run.path) for run in same)}: one run (config_digest {digest}, seed {seed}) found "
            f"{len(same)} times, counted once: {kept.path} kept"
        )
    return [run for run in runs if id(run) not in left_out], lines


def group_by_recipe(runs: list[Run]) -> list[list[Run]]:
    """Runs with equal `config_digest`, in the order their first run comes; a run without one stands alone, and so
    does a run whose seed is of the wrong type (it could be a copy of another seed's run)."""
    groups: dict[object, list[Run]] = {}
    for index, run in enumerate(runs):
        digest = run.metrics.get(schema.CONFIG_DIGEST)
        alone = digest is None or schema.SEED in run.wrong_types
        groups.setdefault(("alone", index) if alone else digest, []).append(run)
    return list(groups.values())


def row_split(group: list[Run]) -> str | None:
    """The one split a row's top-1 comes from: test when any of its runs tested, else validation (marked in the
    report); a validation figure never enters a mean of test figures."""
    return next((split for split in SPLITS if any(run.top1_source == split for run in group)), None)


def mixed_split_notes(groups: list[list[Run]]) -> list[str]:
    """One line for each run left out of its row's top-1 because its top-1 comes from another split."""
    lines = []
    for group in groups:
        split = row_split(group)
        lines.extend(
            f"{run.path}: top-1 from validation (the run has no test/acc): left out of the mean test top-1 of "
            f"{run.label}'s seeds"
            for run in group
            if run.top1_source not in (split, None)
        )
    return lines


def merge_seeds(group: list[Run]) -> tuple[Run, SeedStats]:
    """One row's run for a group: top-1 is the mean over its seeds of one split (`row_split`), every other figure
    the median (counts are equal across seeds; timings vary), in the table's values and in the metrics that the
    runtime and speed tables read alike; a flag (e.g. `latency/<runtime>_contended`) is set when any seed's is; the
    first run names it."""
    split = row_split(group)
    counted = [run for run in group if split is not None and run.top1_source == split]
    int8_key = schema.accuracy_key("onnxruntime_int8")
    int8 = [100.0 * run.metrics[int8_key] for run in counted if run.metrics.get(int8_key) is not None]
    stats = replace(
        seed_stats([run.values["top1"] for run in counted], tuple(run.metrics.get(schema.SEED) for run in counted)),
        top1_int8_mean=statistics.fmean(int8) if int8 else None,
    )
    if len(group) == 1:
        return group[0], stats
    values = {}
    for name in group[0].values:
        present = [run.values[name] for run in group if run.values.get(name) is not None]
        values[name] = statistics.median(present) if present else None
    values["top1"] = stats.top1_mean
    metrics = dict(group[0].metrics)
    for key in {key for run in group for key in run.metrics} - {schema.SEED}:  # the row lists its seeds
        present = [run.metrics[key] for run in group if run.metrics.get(key) is not None]
        if present and all(isinstance(value, bool) for value in present):
            metrics[key] = any(present)
        elif present and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in present):
            metrics[key] = statistics.median(present)
    return replace(group[0], values=values, metrics=metrics, top1_source=split), stats


@dataclass(frozen=True)
class Comparison:
    """Row a against row b (two groups of seeds): `differ` is True when their 95% intervals do not overlap."""

    difference: float  # mean a - mean b, in points of top-1
    differ: bool
    p_value: float  # Welch's two-sided t-test (unequal variances), which does not need the intervals' overlap rule

    @property
    def verdict(self) -> str:
        return "differ beyond the intervals" if self.differ else "no difference beyond the intervals"


def compare(a: SeedStats, b: SeedStats) -> Comparison | None:
    """None unless both rows have at least two seeds (no interval otherwise)."""
    if a.n_seeds < 2 or b.n_seeds < 2 or a.top1_mean is None or b.top1_mean is None:
        return None
    from scipy.stats import ttest_ind_from_stats

    low_a, high_a = a.top1_mean - a.top1_ci95, a.top1_mean + a.top1_ci95
    low_b, high_b = b.top1_mean - b.top1_ci95, b.top1_mean + b.top1_ci95
    if a.top1_std == 0 and b.top1_std == 0:  # scipy returns nan: equal means do not differ, unequal ones do
        p_value = 1.0 if a.top1_mean == b.top1_mean else 0.0
    else:
        p_value = float(
            ttest_ind_from_stats(
                a.top1_mean, a.top1_std, a.n_seeds, b.top1_mean, b.top1_std, b.n_seeds, equal_var=False
            ).pvalue
        )
    return Comparison(a.top1_mean - b.top1_mean, high_a < low_b or high_b < low_a, p_value)
