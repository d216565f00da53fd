"""Several seeds of one recipe are one report row: n_seeds, mean, sample std, Student-t 95% interval, verdict."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest

from lnrepro.reporting import make_report
from lnrepro.reporting.seeds import seed_stats


def write_run(folder, seed, top1, digest="abc123", width=0.5, **extra):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "model": "shufflenet_v2",
                "width": width,
                "data": "cifar10",
                "stem": "cifar",
                "seed": seed,
                "config_digest": digest,
                "test/acc": top1,
                "params": 352042,
                "flops": 21804032,
                "latency_ms": 1.0 + seed,
                "schema_version": 2,
                **extra,
            }
        )
    )


def test_seed_stats_match_the_textbook_formulas():
    stats = seed_stats([80.0, 82.0, 84.0])
    assert stats.n_seeds == 3 and stats.top1_mean == pytest.approx(82.0)
    assert stats.top1_std == pytest.approx(2.0)  # sample standard deviation
    assert stats.top1_ci95 == pytest.approx(4.302653 * 2.0 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) = 4.3027
    single = seed_stats([80.0])
    assert single.n_seeds == 1 and single.top1_std is None and single.top1_ci95 is None


@pytest.mark.parametrize("published, verdict", [(83.0, "reproduced"), (95.0, "below"), (70.0, "above")])
def test_runs_equal_but_for_the_seed_are_one_row_with_a_verdict(tmp_path, published, verdict):
    for seed, top1 in enumerate([0.80, 0.82, 0.84]):
        write_run(tmp_path / "sweep" / str(seed), seed, top1)
    write_run(tmp_path / "sweep" / "3", 0, 0.70, digest="other", width=1.0)  # another recipe: its own row
    reference = tmp_path / "published.csv"
    reference.write_text(f"model,width,top1\nshufflenet_v2,0.5,{published}\nshufflenet_v2,1.0,69.0\n")
    report = make_report([tmp_path / "sweep"], reference=reference, out_dir=tmp_path / "out", plots=False)
    assert len(report.rows) == 2
    with open(tmp_path / "out" / "report.csv", newline="") as file:
        rows = {row["model"]: row for row in csv.DictReader(file)}
    grouped, alone = rows["shufflenet_v2_x0.5"], rows["shufflenet_v2"]
    assert grouped["n_seeds"] == "3" and float(grouped["top1_mean"]) == pytest.approx(82.0)
    assert float(grouped["top1_std"]) == pytest.approx(2.0) and grouped["verdict"] == verdict
    assert alone["n_seeds"] == "1" and alone["top1_ci95"] == "" and alone["verdict"] == "reproduced"  # 70 vs 69
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| n_seeds | top1_mean | top1_std | top1_ci95 | top1_int8_mean | verdict |" in markdown.replace("  ", " ")
    assert f"| {verdict} |" in markdown


def test_with_a_published_figure_one_seed_is_judged_against_the_tolerance(tmp_path):
    write_run(tmp_path / "run", 0, 0.895)
    reference = tmp_path / "published.csv"
    reference.write_text("model,width,top1\nshufflenet_v2,0.5,90.13\n")
    strict = make_report([tmp_path / "run"], reference=reference, out_dir=tmp_path / "a", plots=False, tolerance=0.5)
    loose = make_report([tmp_path / "run"], reference=reference, out_dir=tmp_path / "b", plots=False, tolerance=1.0)
    assert strict.rows[0].verdict == "below" and loose.rows[0].verdict == "reproduced"


def test_a_seed_row_shows_median_timings_in_every_table_and_the_mean_int8_top1(tmp_path):
    for seed, (top1, int8, eager, onnx) in enumerate(
        [(0.80, 0.79, 8.0, 1.0), (0.82, 0.82, 5.0, 1.2), (0.84, 0.82, 6.0, 3.0)]
    ):
        write_run(
            tmp_path / str(seed),
            seed,
            top1,
            **{
                "test/acc_onnxruntime_int8": int8,
                "latency/eager_ms": eager,
                "latency/onnxruntime_ms": onnx,
                "latency/onnxruntime_contended": seed == 2,
            },
        )
    report = make_report([tmp_path], out_dir=tmp_path / "out", plots=False)
    (row,) = report.rows
    assert row.seed_stats.top1_int8_mean == pytest.approx(81.0)
    # the main table's ms/image and the runtime table read the same median, not the first seed's figure
    assert row.run.values["infer_ms_per_image"] == row.run.metrics["latency/eager_ms"] == 6.0
    assert row.run.metrics["latency/onnxruntime_ms"] == 1.2 and row.run.metrics["latency/onnxruntime_contended"]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "1.2*" in markdown and "| 81 |" in markdown
    assert "| +1.00 |" in markdown  # int8's drop: mean top-1 82 - mean int8 top-1 81, not a difference of medians
    with open(tmp_path / "out" / "report.csv", newline="") as file:
        assert float(next(csv.DictReader(file))["top1_int8_mean"]) == pytest.approx(81.0)


def test_an_ablation_s_rows_are_labelled_by_their_option_and_compared_beyond_their_intervals(tmp_path):
    """GhostNet learned vs zeros (same name, ghostnet_ghost) are two rows named by the option that differs; rows
    of one model with several seeds each are compared: far apart means differ, overlapping ones do not."""
    accuracies = {"learned": [0.80, 0.81, 0.82], "zeros": [0.70, 0.71, 0.72], "fixed": [0.80, 0.815, 0.83]}
    for cheap, top1s in accuracies.items():
        for seed, top1 in enumerate(top1s):
            write_run(
                tmp_path / cheap / str(seed),
                seed,
                top1,
                digest=cheap,
                width=1.0,
                **{"model": "ghostnet", "conv": "ghost", "model/ghost_cheap": cheap, "model/dropout": 0.2},
            )
    report = make_report([tmp_path], out_dir=tmp_path / "out", plots=False)
    labels = sorted(row.run.label for row in report.rows)
    assert labels == [f"ghostnet_ghost ghost_cheap={cheap}" for cheap in ("fixed", "learned", "zeros")]
    pairs = {
        frozenset(cell.strip().split("=")[1] for cell in line.split("|")[1:3]): line
        for line in report.markdown.splitlines()
        if line.startswith("| ghostnet_ghost ghost_cheap=") and "beyond the intervals" in line
    }
    assert len(pairs) == 3
    assert "no difference beyond the intervals" in pairs[frozenset({"learned", "fixed"})]
    learned_zeros = pairs[frozenset({"learned", "zeros"})]
    assert "| differ beyond the intervals" in learned_zeros and "10.00" in learned_zeros
    with open(tmp_path / "out" / "report.csv", newline="") as file:
        assert {row["variant"] for row in csv.DictReader(file)} == {f"ghost_cheap={c}" for c in accuracies}


def test_compare_needs_two_seeds_a_side_and_agrees_with_welch():
    from scipy.stats import ttest_ind

    from lnrepro.reporting.seeds import compare

    assert compare(seed_stats([80.0]), seed_stats([70.0, 71.0])) is None
    a, b = [80.0, 81.0, 83.0], [79.0, 80.5, 82.0]
    result = compare(seed_stats(a), seed_stats(b))
    assert result.difference == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
    assert result.p_value == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue)
    assert not result.differ
    assert compare(seed_stats([80.0, 80.0]), seed_stats([70.0, 70.0])).differ


def report_with_warnings(capsys, folder, out) -> tuple[str, list[dict[str, str]], list[str]]:
    """`lnrepro-report FOLDER --no-plots --out OUT` in this process, which exits 0: its report.md, report.csv rows
    and warning lines."""
    from lnrepro.cli import report

    assert report([str(folder), "--no-plots", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    with open(out / "report.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    return (out / "report.md").read_text(), rows, [line for line in err.splitlines() if line.startswith("warning: ")]


def assert_noted(markdown: str, warning: str) -> None:
    """A warning on stderr is also a note of report.md."""
    assert f"- {warning.removeprefix('warning: ')}" in markdown.splitlines()


@pytest.mark.parametrize(
    "bad",
    ["n/a", "0.99", {"acc": 0.99}, [0.99], True, float("nan"), float("inf")],
    ids=["text", "number-as-text", "dict", "list", "flag", "nan", "inf"],
)
def test_a_test_acc_that_is_not_a_number_is_named_and_left_out_of_the_mean_not_replaced_by_val(tmp_path, capsys, bad):
    for seed, top1 in enumerate([0.80, 0.82]):
        write_run(tmp_path / "sweep" / str(seed), seed, top1, **{"val/acc_best": 0.99})
    write_run(tmp_path / "sweep" / "2", 2, bad, **{"val/acc_best": 0.99})  # json writes NaN and Infinity as such
    markdown, rows, warnings = report_with_warnings(capsys, tmp_path / "sweep", tmp_path / "out")
    (warning,) = warnings
    damaged = (tmp_path / "sweep" / "2" / "metrics.json").resolve()
    assert warning.startswith(f"warning: {damaged}: test/acc is ") and ", not a " in warning
    assert "left out of the top-1 figures" in warning
    assert_noted(markdown, warning)
    (row,) = rows
    assert row["n_seeds"] == "2" and float(row["top1_mean"]) == pytest.approx(81.0) and row["top1"] == "81.0"
    assert row["top1_split"] == "test" and "99.0" not in markdown
    assert not [line for line in markdown.splitlines() if line.startswith("|") and "†" in line]
    assert "| 0,1 |" in markdown  # the seeds the mean is over


def test_a_run_alone_with_a_broken_test_acc_shows_no_top1_rather_than_its_validation_figure(tmp_path, capsys):
    write_run(tmp_path / "runs" / "broken", 0, "n/a", digest="broken", **{"val/acc_best": 0.99})
    write_run(tmp_path / "runs" / "untested", 0, None, digest="untested", width=1.0, **{"val/acc_best": 0.70})
    markdown, rows, warnings = report_with_warnings(capsys, tmp_path / "runs", tmp_path / "out")
    assert len(warnings) == 1 and "broken" in warnings[0]
    top1 = {row["model"]: (row["top1"], row["top1_split"]) for row in rows}
    assert top1 == {"shufflenet_v2_x0.5": ("", ""), "shufflenet_v2": ("70.0", "val")}  # no test: validation, marked
    assert "| 70.0† |" in markdown and "99.0" not in markdown


def test_a_copied_run_is_counted_once_with_one_line_naming_the_copies(tmp_path, capsys):
    import shutil

    for seed, top1 in enumerate([0.80, 0.82, 0.84]):
        write_run(tmp_path / "sweep" / str(seed), seed, top1)
    shutil.copytree(tmp_path / "sweep" / "1", tmp_path / "sweep" / "1_copy")
    markdown, rows, warnings = report_with_warnings(capsys, tmp_path / "sweep", tmp_path / "out")
    (warning,) = warnings
    original, copy = ((tmp_path / "sweep" / name / "metrics.json").resolve() for name in ("1", "1_copy"))
    assert warning.startswith(f"warning: {original}, {copy}: ") and "seed 1" in warning
    assert warning.endswith(f"counted once: {original} kept")
    assert_noted(markdown, warning)
    (row,) = rows
    assert row["n_seeds"] == "3" and float(row["top1_mean"]) == pytest.approx(82.0)
    assert float(row["top1_ci95"]) == pytest.approx(4.302653 * 2.0 / math.sqrt(3), abs=1e-3)  # not 4 seeds' interval
    assert markdown.splitlines()[2].startswith("3 run(s) from")


def test_a_row_s_top1_comes_from_one_split_and_says_which(tmp_path, capsys):
    """A seed without a test figure is not averaged with tested seeds; a row of untested seeds is marked."""
    for seed, top1 in enumerate([0.80, 0.82]):
        write_run(tmp_path / "sweep" / str(seed), seed, top1)
    write_run(tmp_path / "sweep" / "2", 2, None, **{"val/acc_best": 0.99})  # stopped before testing
    for seed, best in enumerate([0.70, 0.72]):
        write_run(tmp_path / "sweep" / f"val{seed}", seed, None, digest="untested", width=1.0, **{"val/acc_best": best})
    markdown, rows, warnings = report_with_warnings(capsys, tmp_path / "sweep", tmp_path / "out")
    (warning,) = warnings
    assert warning.startswith(
        f"warning: {(tmp_path / 'sweep' / '2' / 'metrics.json').resolve()}: top-1 from validation"
    )
    assert_noted(markdown, warning)
    tested, untested = rows
    assert (tested["n_seeds"], tested["top1_mean"], tested["top1_split"]) == ("2", "81.0", "test")
    assert (untested["n_seeds"], untested["top1_mean"], untested["top1_split"]) == ("2", "71.0", "val")
    assert "| shufflenet_v2 | 0,1 | 2 | 71† |" in markdown and "| 71.0† |" in markdown
    assert "| shufflenet_v2_x0.5 | 0,1 | 2 | 81 |" in markdown


def test_each_key_of_the_wrong_type_is_named_once_and_the_report_completes(tmp_path, capsys):
    """Beyond test/acc: a bad seed or digest keeps a run out of its recipe's mean, a bad figure reads as missing,
    a bad name key leaves the run out; tables that read the raw figures (runtimes, speed) do not fail on them."""
    for seed in (0, 1):
        write_run(tmp_path / "sweep" / str(seed), seed, 0.80, **{"test/acc_onnxruntime_int8": 0.79})
    bad = {
        "seed": {"seed": "2"},
        "config_digest": {"config_digest": {"not": "a digest"}},
        "params": {"params": "352K"},
        "latency/onnxruntime_ms": {"latency/onnxruntime_ms": [1.0]},
        "test/acc_onnxruntime_int8": {"test/acc_onnxruntime_int8": "n/a"},
        "schema_version": {"schema_version": "2"},
        "width": {"width": "0.5"},
    }
    for seed, (key, extra) in enumerate(bad.items(), start=2):
        folder = tmp_path / "sweep" / key.replace("/", "_")
        write_run(folder, seed, 0.80)
        metrics = json.loads((folder / "metrics.json").read_text())
        (folder / "metrics.json").write_text(json.dumps({**metrics, **extra}))
    markdown, rows, warnings = report_with_warnings(capsys, tmp_path / "sweep", tmp_path / "out")
    assert len(warnings) == len(bad)
    for key in bad:
        path = (tmp_path / "sweep" / key.replace("/", "_") / "metrics.json").resolve()
        (line,) = [line for line in warnings if str(path) in line]
        assert f"{path}: {key} is " in line
        assert_noted(markdown, line)
    assert "skipping" in next(line for line in warnings if "width is '0.5'" in line)  # the run cannot be named
    # the seeds 0, 1 and the four runs whose bad key is a figure are one row; the bad seed and digest stand alone
    assert sorted(row["n_seeds"] for row in rows) == ["1", "1", "6"]
    grouped = next(row for row in rows if row["n_seeds"] == "6")
    assert grouped["params"] == "352042.0" and float(grouped["top1_int8_mean"]) == pytest.approx(79.0)
