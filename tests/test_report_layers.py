"""lnrepro-report over runs with per-layer tables (layers/<runtime>.csv written by hand): time by operator kind, the
most expensive layers, roofline plots, and runs without tables left as they were."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lnrepro.cli import report as report_cli
from lnrepro.reporting import layers, make_report
from lnrepro.reporting.layers import ROOFLINE_PREFIX, read_layers, roof
from tests.test_report import assert_valid_png

COLUMNS = [
    "name",
    "kind",
    "op",
    "macs",
    "bytes",
    "time_ms",
    "intensity",
    "gflops",
    "gbps",
    "bound_ms",
    "roofline_share",
]


def layer(name, kind, time_ms, macs=None, moved=None, bound_ms=None, op="Conv") -> dict:
    """A row as the profile writes it: rates and intensity from multiply-adds, bytes and time."""
    row = {"name": name, "kind": kind, "op": op, "time_ms": time_ms, "macs": macs, "bytes": moved}
    if macs is not None and moved:
        row.update(intensity=2 * macs / moved, gflops=2 * macs / time_ms / 1e6, gbps=moved / time_ms / 1e6)
    if bound_ms is not None:
        row.update(bound_ms=bound_ms, roofline_share=bound_ms / time_ms)
    return row


def write_layers(run: Path, runtime: str, rows: list[dict], columns: list[str] = COLUMNS) -> Path:
    path = run / "layers" / f"{runtime}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{key: "" if value is None else value for key, value in row.items()} for row in rows])
    return path


def write_run(run: Path, model="ghostnet", seed=0, **extra) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    metrics = {
        "model": model,
        "width": 1.0,
        "stem": "imagenet",
        "data": "imagenet",
        "seed": seed,
        "test/acc": 0.7,
        "flops": 3e8,
        "latency/eager_ms": 28.0,
        "latency/onnxruntime_ms": 10.0,
        "roofline/gflops": 100.0,
        "roofline/gbps": 20.0,
        **extra,
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


# Twelve layers in four kinds, 9.6 ms in all: depthwise 1.0 + 2.0 + 3.0 = 6.0 ms, conv1x1 0.5 x 4 = 2.0 ms,
# elementwise 0.2 x 3 = 0.6 ms, concat_split_shuffle 1.0 ms (no shapes: a node the runtime could not tie to a layer).
ONNX_LAYERS = (
    [layer(f"dw{i}", "depthwise", float(i), macs=1e6 * i, moved=4e6, bound_ms=0.2 * i) for i in (1, 2, 3)]
    + [layer(f"pw{i}", "conv1x1", 0.5, macs=2e7, moved=1e6, bound_ms=0.4) for i in range(4)]
    + [layer(f"add{i}", "elementwise", 0.2, macs=0, moved=3e5, op="Add") for i in range(3)]
    + [layer("shuffle", "concat_split_shuffle", 1.0, op="Transpose")]
    + [layer("reshape", "other", 0.1, op="Reshape")]
)
# the eleventh layer of twelve by time: 0.2 ms elementwise; the twelfth: 0.1 ms other
ONNX_TOTAL = 9.7


@pytest.fixture
def run_with_layers(tmp_path) -> Path:
    run = write_run(tmp_path / "runs" / "ghostnet")
    write_layers(run, "onnxruntime", ONNX_LAYERS)
    write_layers(run, "eager", [layer("conv", "conv", 20.0, macs=1e8, moved=1e7), layer("relu", "elementwise", 5.0)])
    return tmp_path / "runs"


def section(markdown: str, runtime: str) -> str:
    start = markdown.index(f", {runtime}\n")
    end = markdown.find("\n### ", start)
    return markdown[start : end if end >= 0 else None]


def table_rows(text: str, first_header: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def test_time_by_kind_and_the_ten_most_expensive_layers(run_with_layers, tmp_path):
    report = make_report([run_with_layers], out_dir=tmp_path / "out")
    onnx = section(report.markdown, "onnxruntime")
    assert "12 timed layers sum to 9.7 ms; end-to-end median 10 ms (layers / end-to-end: 0.97)" in onnx
    assert "roofline peaks 100 GFLOP/s, 20 GB/s" in onnx
    kinds = table_rows(onnx, "kind")
    assert kinds == [
        ["depthwise", "6", f"{100 * 6 / ONNX_TOTAL:.1f}", "3"],
        ["conv1x1", "2", f"{100 * 2 / ONNX_TOTAL:.1f}", "4"],
        ["concat_split_shuffle", "1", f"{100 * 1 / ONNX_TOTAL:.1f}", "1"],
        ["elementwise", "0.6", f"{100 * 0.6 / ONNX_TOTAL:.1f}", "3"],
        ["other", "0.1", f"{100 * 0.1 / ONNX_TOTAL:.1f}", "1"],
    ]
    top = table_rows(onnx, "layer")
    assert len(top) == 10
    assert [row[0] for row in top[:3]] == ["dw3", "dw2", "dw1"]
    assert "reshape" not in [row[0] for row in top] and sum(row[0].startswith("add") for row in top) == 2
    # dw3: 3 ms, 30.9% of the time, 3M multiply-adds over 4 MB: 1.5 FLOP/byte, 2 GFLOP/s, 1.33 GB/s, bound 0.6 ms
    assert top[0] == ["dw3", "depthwise", "3", f"{100 * 3 / ONNX_TOTAL:.1f}", "3M", "4M", "1.5", "2", "1.33", "20.0"]
    shuffle = next(row for row in top if row[0] == "shuffle")
    assert shuffle[4:] == ["-"] * 6  # no shapes: its figures are missing, not zero
    eager = section(report.markdown, "eager")
    assert "2 timed layers sum to 25 ms; end-to-end median 28 ms (layers / end-to-end: 0.89)" in eager
    assert report.markdown.index(", eager\n") < report.markdown.index(", onnxruntime\n")  # schema.RUNTIMES order


def test_one_roofline_plot_per_run_and_runtime_shown_in_its_section(run_with_layers, tmp_path):
    report = make_report([run_with_layers], out_dir=tmp_path / "out")
    plots = {name: path for name, path in report.files.items() if name.startswith(ROOFLINE_PREFIX)}
    assert sorted(plots) == ["roofline_ghostnet_eager", "roofline_ghostnet_onnxruntime"]
    for path in plots.values():
        assert path.parent == tmp_path / "out"
        assert_valid_png(path)
        assert report.markdown.count(f"({path.name})") == 1  # in its section, not again in the plot list
    onnx = section(report.markdown, "onnxruntime")
    assert "(roofline_ghostnet_onnxruntime.png)" in onnx
    [table] = [table for table in report.layer_tables if table.runtime == "onnxruntime"]
    # placed: the nine layers with multiply-adds and bytes, but not the three adds (0 FLOPs: no point on a log axis)
    assert sorted(layer.name for layer in table.roofline_points()) == ["dw1", "dw2", "dw3"] + [
        f"pw{i}" for i in range(4)
    ]


def test_the_roof_is_the_memory_slope_then_the_compute_ceiling():
    xs, ys = roof(gflops=100.0, gbps=20.0, low=0.5, high=50.0)
    assert xs == [0.5, 5.0, 50.0]  # the ridge at 100 / 20 = 5 FLOP/byte
    assert ys == [10.0, 100.0, 100.0]
    assert roof(100.0, 20.0, 10.0, 50.0) == ([10.0, 50.0], [100.0, 100.0])  # all compute-bound


def test_a_kind_has_one_colour_in_every_plot_of_a_report(tmp_path, monkeypatch):
    for name, kinds in (("a", ["depthwise", "conv1x1"]), ("b", ["conv1x1", "se", "pool"])):
        run = write_run(tmp_path / "runs" / name, model=f"net_{name}")
        write_layers(
            run, "onnxruntime", [layer(f"l{i}", kind, 1.0, macs=1e6, moved=1e6) for i, kind in enumerate(kinds)]
        )
    drawn = []
    plot = layers.roofline_plot

    def recording_plot(path, table, colours=None):
        drawn.append((table.run.model, colours))
        return plot(path, table, colours)

    monkeypatch.setattr(layers, "roofline_plot", recording_plot)
    make_report([tmp_path / "runs"], out_dir=tmp_path / "out")
    assert [model for model, _ in drawn] == ["net_a", "net_b"]
    (_, first), (_, second) = drawn
    assert first == second and sorted(first) == ["conv1x1", "depthwise", "pool", "se"]
    assert len(set(first.values())) == 4  # told apart


def test_runs_without_layer_tables_are_unchanged(run_with_layers, tmp_path):
    plain = write_run(tmp_path / "plain" / "a", model="mobilenet_v2")
    report = make_report([plain.parent], out_dir=tmp_path / "out_plain")
    assert "per layer" not in report.markdown and not report.layer_tables
    assert not [name for name in report.files if name.startswith(ROOFLINE_PREFIX)]
    # beside a run with tables: sections for that run only
    both = make_report([plain.parent, run_with_layers], out_dir=tmp_path / "out_both")
    assert {table.run.model for table in both.layer_tables} == {"ghostnet"}
    assert "### mobilenet_v2" not in both.markdown and not both.notes


def test_seeds_of_one_recipe_get_a_plot_each(tmp_path):
    for seed in (0, 1):
        run = write_run(tmp_path / "sweep" / str(seed), seed=seed)
        write_layers(run, "onnxruntime", ONNX_LAYERS)
    report = make_report([tmp_path / "sweep"], out_dir=tmp_path / "out")
    plots = sorted(name for name in report.files if name.startswith(ROOFLINE_PREFIX))
    assert plots == ["roofline_ghostnet_0_onnxruntime", "roofline_ghostnet_1_onnxruntime"]
    assert "### ghostnet, onnxruntime (`0`)" in report.markdown and "### ghostnet, onnxruntime (`1`)" in report.markdown


def test_unusable_tables_and_peaks_are_named_and_the_rest_reported(tmp_path, capsys):
    run = write_run(tmp_path / "runs" / "a", **{"roofline/gflops": "fast", "roofline/gbps": None})
    write_layers(run, "onnxruntime", ONNX_LAYERS)
    broken = write_layers(run, "eager", [{"name": "x", "kind": "conv"}], columns=["name", "kind"])
    (run / "layers" / "onnxruntime_int8.csv").write_text("name,kind,time_ms\nconv,conv,n/a\n")
    report = make_report([tmp_path / "runs"], out_dir=tmp_path / "out")
    err = capsys.readouterr().err
    assert f"warning: skipping {broken}: no column time_ms" in err
    assert "onnxruntime_int8.csv: no row with a time_ms" in err
    assert "roofline/gflops is 'fast', not a positive number: its roofline plots have no roofs" in err
    assert len(report.notes) == 3 and all(note in report.markdown for note in report.notes)
    assert [table.runtime for table in report.layer_tables] == ["onnxruntime"]
    assert report.layer_tables[0].peaks is None and "roofline peaks" not in report.markdown
    assert_valid_png(report.files["roofline_ghostnet_onnxruntime"])  # the points, without roofs


def test_a_table_with_only_the_required_columns_still_plots(tmp_path):
    run = write_run(tmp_path / "runs" / "a")
    write_layers(
        run,
        "onnxruntime",
        [layer("pw", "conv1x1", 0.5, macs=2e7, moved=1e6), layer("cell", "other", "not a number")],
        columns=["name", "kind", "macs", "bytes", "time_ms"],
    )
    [pw, cell] = read_layers(run / "layers" / "onnxruntime.csv")
    assert (pw.intensity, pw.gflops, pw.gbps) == pytest.approx((40.0, 80.0, 2.0))
    assert pw.roofline_share is None and cell.time_ms is None  # read as empty, not as an error
    report = make_report([tmp_path / "runs"], out_dir=tmp_path / "out")
    assert "1 timed layers sum to 0.5 ms" in report.markdown
    assert "roofline_ghostnet_onnxruntime" in report.files


def test_the_cli_renders_the_sections_and_no_plots_skips_only_the_plots(run_with_layers, tmp_path, capsys):
    assert report_cli([str(run_with_layers), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "## Where the time goes, per layer" in out and "### ghostnet, onnxruntime" in out
    assert not list((tmp_path / "out").glob("*.png"))
    assert (tmp_path / "out" / "report.md").read_text() == out


def test_one_summary_row_per_run_and_runtime_with_the_share_of_each_kind(run_with_layers, tmp_path):
    report = make_report([run_with_layers], out_dir=tmp_path / "out")
    header = next(line for line in report.markdown.splitlines() if line.startswith("| network |"))
    # kinds by their shares summed over both tables: conv 0.8 (eager), depthwise 0.619, elementwise 0.2 + 0.062,
    # conv1x1 0.206, concat_split_shuffle 0.103, other 0.010
    assert header.split(" | ")[4:7] == ["conv %", "depthwise %", "elementwise %"]
    rows = {row[1]: row for row in table_rows(report.markdown, "network")}
    assert set(rows) == {"eager", "onnxruntime"}
    assert rows["onnxruntime"][2:5] == ["9.7", "10", "0.0"]  # sum, end-to-end, no dense conv
    assert rows["onnxruntime"][5] == f"{100 * 6 / ONNX_TOTAL:.1f}"
    assert rows["eager"][2:6] == ["25", "28", "80.0", "0.0"]
    shares = [float(cell) for cell in rows["onnxruntime"][4:]]
    assert sum(shares) == pytest.approx(100, abs=0.3)  # every kind is a column: the shares add up


def test_the_latency_timed_with_the_profiled_calls_is_preferred(tmp_path):
    run = write_run(tmp_path / "runs" / "ghostnet", **{"layers/onnxruntime_latency_ms": 9.5})
    write_layers(run, "onnxruntime", ONNX_LAYERS)
    report = make_report([tmp_path / "runs"], out_dir=tmp_path / "out")
    assert "end-to-end median 9.5 ms (layers / end-to-end: 1.02)" in section(report.markdown, "onnxruntime")
