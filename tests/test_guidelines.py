"""ShuffleNet V2's guideline benchmarks (lnrepro/experiments/shufflenetv2_guidelines.py): each table holds FLOPs
equal across its rows (the paper's design), memory access cost ordered as the guideline predicts, timings are
positive, every (row, runtime) is timed in interleaved rounds, each guideline's verdict follows its rule in each
runtime, a runtime that cannot run a row costs only that row, and the `shufflenetv2_guidelines` preset runs through
lnrepro-profile's task at a tiny size with its ONNX Runtime and ExecuTorch columns and verdicts."""

from __future__ import annotations

import csv
import re
from types import SimpleNamespace

import pytest

from lnrepro.experiments.shufflenetv2_guidelines import (
    GUIDELINES,
    PAPER_BASES,
    PAPER_FIGURES,
    PREDICTIONS,
    elementwise_bytes,
    g1_channels,
    g2_channels,
    g3_channels,
    paper_figures,
    paper_verdict_ratio,
    run_guideline,
    run_guidelines,
    setting_names,
    settings,
    verdict_ratio,
)
from lnrepro.profiling import count_macs
from lnrepro.tasks.profile import profile
from tests.conftest import compose_config

SIZE = 16  # small input for speed; FLOPs ratios do not depend on it, MAC orderings hold down to it
# the preset at a tiny size, through lnrepro-profile's task
TINY_PRESET = [
    "experiment=shufflenetv2_guidelines",
    "profile.guideline.scale=0.125",
    "profile.guideline.size=4",
    "profile.guideline.blocks=1",
]
EAGER_ONLY = "profile.runtimes=[eager]"  # where a test is about the tables, not the runtimes: no exports
PLATFORMS = sorted(PAPER_BASES)


def counted(guideline: str, base: int, size: int = SIZE) -> list[tuple[str, int, int]]:
    """(setting, FLOPs, MAC bytes) of each row, one block (every row stacks the same number of blocks)."""
    counts = [(s.name, count_macs(s.network, s.input_shape)) for s in settings(guideline, base, size, blocks=1)]
    return [(name, macs.flops, macs.mac_bytes) for name, macs in counts]


def test_paper_channel_settings():
    assert [g1_channels(r, 128) for r in (1, 2, 6, 12)] == [(128, 128), (90, 180), (52, 312), (36, 432)]
    assert [g1_channels(r, 32) for r in (1, 2, 6, 12)] == [(32, 32), (22, 44), (13, 78), (9, 108)]
    assert [g2_channels(g, 128) for g in (1, 2, 4, 8)] == [128, 180, 256, 360]
    assert [g3_channels(n, 128) for n in (1, 2, 4)] == [128, 90, 64]


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("guideline", GUIDELINES)
def test_rows_of_a_table_have_equal_flops(guideline, platform):
    flops = [f for _, f, _ in counted(guideline, PAPER_BASES[platform][guideline], size=2)]
    assert max(flops) / min(flops) - 1 < 0.06, flops  # channel counts are integers: within the paper's ~5%


@pytest.mark.parametrize("platform", PLATFORMS)
def test_g1_mac_is_smallest_at_equal_width_and_grows_with_the_ratio(platform):
    macs = [m for _, _, m in counted("g1", PAPER_BASES[platform]["g1"])]
    assert macs == sorted(macs) and macs[0] < macs[-1]
    assert macs[0] == min(macs)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_g2_mac_grows_with_the_group_count(platform):
    macs = [m for _, _, m in counted("g2", PAPER_BASES[platform]["g2"])]
    assert all(a < b for a, b in zip(macs, macs[1:])), macs


def test_g1_mac_is_the_papers_formula():
    (name, flops, mac), *_ = counted("g1", 128)
    c1 = c2 = 128
    assert mac == 4 * 2 * (SIZE * SIZE * (c1 + c2) + c1 * c2)  # two convs, fp32; MAC = hw(c1 + c2) + c1 c2 each


def test_g3_parallel_and_series_differ_only_in_structure():
    rows = {s.name: s for s in settings("g3", 64, 8, blocks=1)}
    for n in (2, 4):
        series, parallel = rows[f"{n}-fragment-series"], rows[f"{n}-fragment-parallel"]
        assert (
            count_macs(series.network, series.input_shape).flops
            == count_macs(parallel.network, parallel.input_shape).flops
        )
        assert elementwise_bytes(series.network, series.input_shape) == 0
        assert elementwise_bytes(parallel.network, parallel.input_shape) > 0


def test_g4_variants_share_flops_and_mac_but_not_elementwise_traffic():
    rows = counted("g4", 8, size=4)
    assert len({f for _, f, _ in rows}) == 1 and len({m for _, _, m in rows}) == 1
    traffic = [elementwise_bytes(s.network, s.input_shape) for s in settings("g4", 8, 4, blocks=1)]
    assert traffic[0] > traffic[1] > 0 and traffic[0] > traffic[2] > 0 and traffic[3] == 0


def test_runner_returns_rows_with_positive_timings():
    rows = run_guideline("g2", base=8, size=4, blocks=1, runs=2, warmup=1)
    assert [r.setting for r in rows] == ["g=1", "g=2", "g=4", "g=8"] == setting_names("g2")
    assert {r.runtime for r in rows} == {"eager"} and rows[0].error is None and rows[0].prepare_s >= 0
    assert all(r.images_per_s > 0 and r.ms_per_batch > 0 and r.flops > 0 and r.mac_bytes > 0 for r in rows)
    assert rows[0].relative_speed == 1.0 and rows[0].paper_arm is None  # not the paper's setting
    assert rows[0].as_dict()["batch_size"] == 1 and rows[0].as_dict()["device"] == "cpu"


def test_rows_are_timed_in_interleaved_rounds_and_take_the_median(monkeypatch):
    import lnrepro.experiments.shufflenetv2_guidelines as guidelines

    calls, speeds = [], iter([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 12.0, 18.0, 33.0, 41.0])

    def fake_throughput(net, batch_size, input_shape, runs, warmup, run=None):
        calls.append((input_shape[0], warmup))
        return SimpleNamespace(images_per_s=next(speeds))

    monkeypatch.setattr(guidelines, "inference_throughput", fake_throughput)
    rows = run_guideline("g2", base=8, size=4, blocks=1, runs=2, warmup=3, rounds=3)
    channels = [r.channels for r in rows]
    assert [c for c, _ in calls] == [int(c[2:]) for c in channels] * 3  # every row in turn, three times
    assert [w for _, w in calls] == [3] * 4 + [1] * 8  # full warm-up only in the first round
    assert [r.images_per_s for r in rows] == [12.0, 20.0, 33.0, 41.0]  # medians of (10, 50, 12), (20, 60, 18), ...
    assert rows[0].spread == pytest.approx((31 - 11) / 12)  # quartiles of (10, 12, 50): 11 and 31
    assert rows[1].relative_speed == pytest.approx(20 / 12)
    with pytest.raises(ValueError, match="rounds"):
        run_guideline("g2", base=8, size=4, blocks=1, rounds=0)


def test_paper_cells_show_the_papers_relative_speed():
    from lnrepro.experiments.shufflenetv2_guidelines import paper_cell

    assert paper_cell(1296, 1480) == "1296 (0.88)" and paper_cell(None, 1480) is None


def test_paper_figures_come_with_the_papers_setting_only():
    # x1 on the GPU is the same network as x4 on ARM (c1 = 128): both tables have a row for it.
    assert paper_figures("g1", 128, 56, 10) == {"gpu": (1480, 1296, 876, 748), "arm": (5.3, 5.1, 4.6, 4.4)}
    assert paper_figures("g1", 32, 56, 10) == {"gpu": None, "arm": (76.2, 72.9, 69.1, 57.6)}
    assert paper_figures("g3", 512, 56, 10)["gpu"] == (434, 336, 349, 320, 292)  # Table 3's c = 512 column
    assert paper_figures("g1", 32, 28, 10) == {"gpu": None, "arm": None}  # another input size
    assert paper_figures("g1", 48, 56, 10) == {"gpu": None, "arm": None}  # not one of the paper's settings


def test_every_paper_table_has_a_figure_per_row():
    for guideline in GUIDELINES:
        rows = len(settings(guideline, 4, size=2, blocks=1))
        for platform, by_base in PAPER_FIGURES[guideline].items():
            assert sorted(by_base) == [PAPER_BASES[platform][guideline] * k for k in (1, 2, 4)]
            assert all(len(figures) == rows for figures in by_base.values())


def test_unknown_guideline_is_an_error():
    with pytest.raises(ValueError, match="g5"):
        settings("g5", 8)


@pytest.mark.parametrize(
    "override, named",
    [("profile.guidelines=[g1,g5]", "'g5'"), ("profile.guideline.rounds=0", "profile.guideline.rounds")],
)
def test_profile_py_refuses_bad_guideline_options_in_one_line(tmp_path, capsys, override, named):
    from lnrepro.tasks.common import run_task

    cfg = compose_config("profile", tmp_path / "run", ["experiment=shufflenetv2_guidelines", override])
    with pytest.raises(SystemExit) as exit_info:
        run_task(profile, cfg)  # fails before measuring anything
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and named in error and "\n" not in error


def test_preset_runs_through_the_profile_task(tmp_path, capsys):
    cfg = compose_config(
        "profile",
        tmp_path / "run",
        [*TINY_PRESET, "profile.runs=1", "profile.warmup=0", "profile.runtimes=[eager,onnxruntime]"],
    )
    assert list(cfg.profile.guidelines) == ["g1", "g2", "g3", "g4"]
    tables = profile(cfg)
    assert [len(tables[g]) for g in GUIDELINES] == [8, 8, 10, 8]  # rows x two runtimes
    printed = capsys.readouterr().out
    assert "G1: equal channel width" in printed and "4-fragment-parallel" in printed
    markdown = (tmp_path / "run" / "guidelines.md").read_text()
    assert markdown.count("### G") == 4 and "| 1:12 |" in markdown and "Does each guideline hold?" in markdown
    with open(tmp_path / "run" / "guidelines.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 34 and all(float(row["images_per_s"]) > 0 for row in rows)
    assert [row["runtime"] for row in rows[:4]] == ["eager", "onnxruntime"] * 2  # each setting's runtimes together
    assert {row["holds"] for row in rows} <= {"True", "False"}
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_preset_times_the_rows_in_onnxruntime_and_executorch_with_a_verdict_each(tmp_path, capsys):
    """The preset's own runtimes (eager, ONNX Runtime, ExecuTorch on XNNPACK): one speed column and one verdict per
    runtime in the printed and written tables, one CSV line per row and runtime."""
    cfg = compose_config(
        "profile",
        tmp_path / "run",
        [*TINY_PRESET, "profile.guidelines=[g2]", "profile.runs=1", "profile.warmup=0", "profile.guideline.rounds=1"],
    )
    assert list(cfg.profile.runtimes) == ["eager", "onnxruntime", "executorch"]
    profile(cfg)
    assert "Does each guideline hold?" in capsys.readouterr().out
    lines = (tmp_path / "run" / "guidelines.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| setting |"))
    assert all(f"| {runtime} img/s (rel.) |" in header for runtime in ("eager", "onnxruntime", "executorch"))
    assert "| guideline | slower / fastest | eager | onnxruntime | executorch |" in lines
    g2_verdicts = next(line for line in lines if line.startswith("| G2 | g=8 / g=1 |"))
    assert len(re.findall(r"\| (holds|does not hold) \(\d+\.\d\d\)", g2_verdicts)) == 3
    with open(tmp_path / "run" / "guidelines.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["runtime"] for row in rows] == ["eager", "onnxruntime", "executorch"] * 4
    assert all(float(row["images_per_s"]) > 0 and not row["error"] for row in rows)
    assert all(float(row["max_abs_diff"]) < 1e-4 for row in rows if row["runtime"] != "eager")
    for runtime in ("onnxruntime", "executorch"):
        measured = {row["holds"] for row in rows if row["runtime"] == runtime}
        assert len(measured) == 1 and measured <= {"True", "False"}  # one verdict per runtime, on each of its rows


def fake_throughput(net, batch_size, input_shape, runs, warmup, run=None):
    return SimpleNamespace(images_per_s=100.0)


def test_lnrepro_train_refuses_the_guideline_keys_in_one_line(make_train_cfg):
    """They are the experiment's keys in the profile group, not profile settings: a fit has no guideline tables."""
    from lnrepro.errors import UserInputError
    from lnrepro.tasks import train

    with pytest.raises(UserInputError, match="profile.guideline is not a profile setting"):
        train(make_train_cfg("experiment=shufflenetv2_guidelines"))


def test_run_guidelines_reports_every_timing_of_every_table(monkeypatch):
    import lnrepro.experiments.shufflenetv2_guidelines as guidelines

    monkeypatch.setattr(guidelines, "inference_throughput", fake_throughput)
    calls = []
    tables = run_guidelines(["g2", "g3"], progress=lambda *call: calls.append(call), base=8, size=4, blocks=1, rounds=2)
    total = (1 + 2) * (4 + 5)  # one preparation and two rounds of each row of G2 and G3 (one runtime: eager)
    assert calls[0] == ("g2", 0, total) and calls[-1] == ("g3", total, total)
    assert [done for _, done, _ in calls] == [*range(0, 13), *range(12, total + 1)]  # G3 starts at G2's 12 steps
    assert {t for _, _, t in calls} == {total}
    assert [len(tables[g]) for g in ("g2", "g3")] == [4, 5]


@pytest.mark.parametrize("terminal", [True, False])
def test_profile_task_shows_a_progress_bar_on_a_terminal_and_logs_tables_elsewhere(
    tmp_path, monkeypatch, caplog, terminal
):
    import io
    import logging

    import rich
    from rich.console import Console

    import lnrepro.experiments.shufflenetv2_guidelines as guidelines

    monkeypatch.setattr(guidelines, "inference_throughput", fake_throughput)
    screen = io.StringIO()
    # the console rich.get_console() hands out: a terminal or not, as the parameter says
    monkeypatch.setattr(rich, "_console", Console(file=screen, force_terminal=terminal, width=120))
    cfg = compose_config(
        "profile",
        tmp_path / "run",
        [*TINY_PRESET, "profile.guideline.rounds=2", EAGER_ONLY],
    )
    with caplog.at_level(logging.INFO, logger="lnrepro"):
        profile(cfg)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("benchmarking")]
    if terminal:
        assert "benchmarking G4" in screen.getvalue() and "51/51" in screen.getvalue()  # 17 rows x (1 + 2 rounds)
        assert logged == []
    else:
        assert screen.getvalue() == ""
        assert logged == [f"benchmarking {guidelines.TITLES[g]}" for g in GUIDELINES]


# --- the verdicts --------------------------------------------------------------------------------------------------
def test_a_verdict_pairs_the_rows_within_each_round():
    """Round 2 timed g=1 while another job ran (4 img/s): g=1's median drops to 10, against which g=8's median 9.8
    reads as 0.98; within the two undisturbed rounds g=8 runs at 0.9 of g=1, and the median of the rounds' own
    ratios says so (0.9, 2.45, 0.9)."""
    speeds = {"g=1": [10.0, 4.0, 11.0], "g=8": [9.0, 9.8, 9.9]}
    assert verdict_ratio("g2", speeds) == pytest.approx(0.9)
    assert verdict_ratio("g2", {"g=1": [10.0], "g=8": [9.6]}) == pytest.approx(0.96)  # holds needs <= 0.95
    assert verdict_ratio("g2", {"g=1": [10.0], "g=8": []}) is None  # a compared row not measured: no verdict


def test_g3s_verdict_needs_both_four_fragment_structures_slower():
    speeds = {"1-fragment": [10.0], "4-fragment-series": [9.9], "4-fragment-parallel": [6.0]}
    assert verdict_ratio("g3", speeds) == pytest.approx(0.99)  # the weaker of the two effects decides
    assert PREDICTIONS["g4"] == ("ReLU no, shortcut no", ("ReLU yes, shortcut yes",))


def test_the_rule_read_on_the_papers_own_figures():
    """The paper says fragmentation hardly slows the ARM CPU (G3's ARM column: 38.4 of 40.2 in series) and that every
    other guideline holds on both platforms: the rule agrees."""
    arm, gpu = PAPER_BASES["arm"], PAPER_BASES["gpu"]
    ratios = {g: paper_verdict_ratio(g, PAPER_FIGURES[g]["arm"][arm[g]]) for g in GUIDELINES}
    assert ratios == pytest.approx({"g1": 57.6 / 76.2, "g2": 27.8 / 40.0, "g3": 38.4 / 40.2, "g4": 56.7 / 66.3})
    assert [ratio <= 0.95 for ratio in ratios.values()] == [True, True, False, True]
    assert all(paper_verdict_ratio(g, PAPER_FIGURES[g]["gpu"][gpu[g]]) <= 0.95 for g in GUIDELINES)
    assert paper_verdict_ratio("g1", None) is None


def test_every_row_and_runtime_is_timed_in_turn_with_its_own_runner(monkeypatch):
    import lnrepro.experiments.shufflenetv2_guidelines as guidelines

    calls, steps = [], []
    speeds = {"eager": iter([10.0, 8.0, 6.0, 4.0] * 2), "onnxruntime": iter([20.0] * 8)}

    def fake_throughput(net, batch_size, input_shape, runs, warmup, run=None):
        calls.append((input_shape[0], run.runtime, warmup))
        return SimpleNamespace(images_per_s=next(speeds[run.runtime]))

    monkeypatch.setattr(guidelines, "inference_throughput", fake_throughput)
    rows = run_guideline(
        "g2",
        base=8,
        size=4,
        blocks=1,
        runs=1,
        warmup=2,
        rounds=2,
        runtimes=["eager", "onnxruntime"],
        step=lambda: steps.append(1),
    )
    channels = [int(s.channels[2:]) for s in settings("g2", 8, 4, blocks=1)]
    visits = [(c, runtime) for c in channels for runtime in ("eager", "onnxruntime")]
    assert [(c, runtime) for c, runtime, _ in calls] == visits * 2  # every (row, runtime) in turn, twice
    assert [w for *_, w in calls] == [2] * 8 + [1] * 8
    assert len(steps) == 8 * 3  # each (row, runtime): one preparation, two timings
    assert [(r.setting, r.runtime) for r in rows[:3]] == [("g=1", "eager"), ("g=1", "onnxruntime"), ("g=2", "eager")]
    eager = [r for r in rows if r.runtime == "eager"]
    onnx = [r for r in rows if r.runtime == "onnxruntime"]
    assert [r.relative_speed for r in eager] == pytest.approx([1.0, 0.8, 0.6, 0.4])
    assert [r.verdict_ratio for r in eager] == pytest.approx([0.4] * 4) and all(r.holds for r in eager)
    assert [r.verdict_ratio for r in onnx] == [1.0] * 4 and not any(r.holds for r in onnx)
    assert all(r.prepare_s > 0 and r.max_abs_diff is not None for r in onnx)


def test_a_runtime_that_cannot_run_a_row_costs_that_row_only(monkeypatch):
    import lnrepro.experiments.shufflenetv2_guidelines as guidelines
    from lnrepro.errors import UserInputError
    from lnrepro.experiments.shufflenetv2_guidelines import failures, guidelines_markdown

    real_prepare = guidelines.prepare

    def prepare(runtime, model, input_size, calibration=None):
        if runtime == "onnxruntime" and input_size[0] in (32, 48):  # g=4 and g=8 at base 16
            raise UserInputError("Sequential cannot be exported to ONNX: an operator it lacks\nsecond line")
        return real_prepare(runtime, model, input_size, calibration=calibration)

    monkeypatch.setattr(guidelines, "prepare", prepare)
    monkeypatch.setattr(guidelines, "inference_throughput", fake_throughput)
    rows = run_guideline("g2", base=16, size=4, blocks=1, runs=1, warmup=0, rounds=1, runtimes=["eager", "onnxruntime"])
    assert [(r.setting, r.runtime) for r in rows if r.error] == [("g=4", "onnxruntime"), ("g=8", "onnxruntime")]
    assert all(r.images_per_s is None and r.relative_speed is None for r in rows if r.error)
    assert all(r.images_per_s == 100.0 for r in rows if not r.error)  # the rest is measured
    assert rows[-1].error == "UserInputError: Sequential cannot be exported to ONNX: an operator it lacks"
    assert {r.holds for r in rows if r.runtime == "onnxruntime"} == {None}  # g=8 unmeasured: no verdict
    assert {r.holds for r in rows if r.runtime == "eager"} == {False}  # 100 / 100: not slower
    markdown = guidelines_markdown({"g2": [r.as_dict() for r in rows]})
    assert "| g=8 | c=48 |" in markdown and "| failed |" in markdown
    assert "- G2 g=8: onnxruntime could not run it: UserInputError: Sequential cannot be exported" in markdown
    assert "onnxruntime not measured" in markdown and len(failures([r.as_dict() for r in rows])) == 2


def test_a_runtime_without_its_package_is_refused_before_measuring(tmp_path, capsys, monkeypatch):
    import importlib.util

    from lnrepro.profiling import runtimes
    from lnrepro.tasks.common import run_task

    real = importlib.util.find_spec
    monkeypatch.setattr(runtimes.importlib.util, "find_spec", lambda name: None if name == "executorch" else real(name))
    cfg = compose_config("profile", tmp_path / "run", TINY_PRESET)
    with pytest.raises(SystemExit) as exit_info:
        run_task(profile, cfg)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "pip install 'lnrepro[mobile]'" in error
    assert error.endswith("or time the guidelines without it: profile.runtimes=[eager,onnxruntime]")
    assert not (tmp_path / "run" / "guidelines.csv").exists()
