"""report.py over fake run directories: columns, published figures side by side, plots, Pareto front, errors."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from lnrepro.reporting import ReportError, format_value, load_reference, make_report, pareto_front, parse_amount
from lnrepro.reporting.collect import read_run
from lnrepro.reporting.reference import shipped_table
from tests.conftest import ROOT

GHOST_VS_DWPW = shipped_table("ghost_vs_dwpw")
IMAGENET = shipped_table("imagenet")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAIN_COLUMNS = [
    "model",
    "stem",
    "params",
    "flops",
    "train_s_per_epoch",
    "val_s",
    "infer_ms_per_image",
    "memory_mib",
    "top1",
]

# (model, conv, stem, params_conv, flops_conv, latency ms, top-1 fraction)
GHOST_VS_DWPW_RUNS = [
    ("vgg16", "standard", "cifar", 14.7e6, 626e6, 5.9, 0.839),
    ("vgg16", "dwpw", "cifar", 1.68e6, 72.9e6, 3.3, 0.821),
    ("vgg16", "ghost", "cifar", 877e3, 40.6e6, 5.9, 0.820),
    ("resnet34", "standard", "cifar", 21.26e6, 2.32e9, 4.7, 0.843),
    ("resnet34", "dwpw", "cifar", 2.58e6, 283e6, 7.2, 0.854),
    ("resnet34", "ghost", "cifar", 1.44e6, 163e6, 4.8, 0.848),
    ("ghostnet", "standard", "imagenet", 19.1e6, 80.7e6, 7.0, 0.756),
    ("ghostnet", "dwpw", "imagenet", 4.81e6, 15.3e6, 9.5, 0.753),
    ("ghostnet", "ghost", "imagenet", 3.88e6, 11.0e6, 13.3, 0.742),
]


def metrics_for(model, conv=None, stem="cifar", params=1e6, flops=1e8, latency=5.0, top1=0.8, **extra) -> dict:
    metrics = {
        "model": model,
        "conv": conv,
        "groups": None,
        "width": 1.0,
        "stem": stem,
        "data": "cifar10",
        "seed": 42,
        "epochs": 50,
        "global_step": 4400,
        "test/acc": top1,
        "test/acc5": 0.99,
        "test/loss": 0.5,
        "val/acc": top1,
        "val/acc_best": top1,
        "val/acc5": 0.99,
        "val/loss": 0.5,
        "train/loss": 0.3,
        "train/acc": 0.9,
        "test/ckpt_path": "x.ckpt",
        "params": params * 1.01,
        "params_conv": params,
        "macs": flops * 1.01 / 2,
        "flops": flops * 1.01,
        "flops_conv": flops,
        "mac_bytes": 4e7,
        "train/imgs_per_s": 5000.0,
        "train/epoch_s": 9.0,
        "val/epoch_s": 1.5,
        "latency_ms": latency,
        "latency_p90_ms": latency * 1.1,
        "infer/imgs_per_s": 900.0,
        "memory/peak_mib": 4096.0,
        "device": "cpu (fake)",
        "dtype": "float32",
        "threads": 2,
        "batch_size": 512,
        "input_size": [3, 32, 32],
        "torch_version": "2.x",
    }
    metrics.update(extra)
    return metrics


def write_run(folder: Path, metrics: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def ghost_vs_dwpw_multirun(tmp_path) -> Path:
    """logs/train/multiruns/<time>/<n>/metrics.json for the nine ghost_vs_dwpw runs, in sweep order."""
    sweep = tmp_path / "logs" / "train" / "multiruns" / "2026-11-23_20-00-00"
    order = [(m, c) for m in ("vgg16", "resnet34", "ghostnet") for c in ("standard", "dwpw", "ghost")]
    # job numbers that sort differently as text (job 10 must come after job 9)
    for job, (model, conv) in zip([0, 1, 2, 3, 4, 5, 6, 7, 10], order):
        row = next(r for r in GHOST_VS_DWPW_RUNS if r[:2] == (model, conv))
        write_run(sweep / str(job), metrics_for(row[0], row[1], row[2], *row[3:]))
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def assert_valid_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width > 100 and height > 100
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.image

    image = matplotlib.image.imread(str(path))
    assert image.shape[:2] == (height, width)


def test_parse_and_format_amounts():
    assert parse_amount("14.7M") == pytest.approx(14.7e6)
    assert parse_amount("877K") == pytest.approx(877e3)
    assert parse_amount("2.32G") == pytest.approx(2.32e9)
    assert parse_amount("83.9") == 83.9 and parse_amount("") is None and parse_amount("n/a") is None
    assert format_value("params", 14.7e6) == "14.7M"
    assert format_value("params", 877e3) == "877K"
    assert format_value("flops", 2.32e9) == "2.32G"
    assert format_value("memory_mib", 4915.2) == "4.8 GiB"
    assert format_value("memory_mib", 512.0) == "512 MiB"
    assert format_value("top1", 83.94) == "83.9"
    assert format_value("val_s", None) == "-"


def test_pareto_front_on_a_hand_made_example():
    # (latency, top-1): b beats a (faster, as accurate); d is dominated by c; e is slowest but most accurate
    points = [(5.0, 80.0), (4.0, 80.0), (6.0, 85.0), (7.0, 84.0), (9.0, 90.0), (6.0, 85.0)]
    assert pareto_front(points) == [1, 2, 5, 4]
    assert pareto_front([(1.0, 1.0)]) == [0]
    assert pareto_front([]) == []


def test_ghost_vs_dwpw_multirun_report_matches_the_table(ghost_vs_dwpw_multirun):
    report = make_report([ghost_vs_dwpw_multirun], reference=GHOST_VS_DWPW)
    rows = read_csv(ghost_vs_dwpw_multirun / "report.csv")
    header = list(rows[0])
    assert header[: len(MAIN_COLUMNS)] == MAIN_COLUMNS
    assert header[len(MAIN_COLUMNS)] == "ref_model"
    # rows in the table's order, each next to its published row
    table = read_csv(GHOST_VS_DWPW)
    assert [r["model"] for r in rows] == [r["model"] for r in table]
    assert [r["ref_model"] for r in rows] == [r["model"] for r in table]
    assert [r["stem"] for r in rows] == [r["stem"] for r in table]
    for ours, published in zip(rows, table):
        # conv-only counts are compared with the table's conv-only counts
        assert float(ours["params"]) == pytest.approx(parse_amount(published["params"]), rel=1e-9)
        assert float(ours["ref_flops"]) == pytest.approx(parse_amount(published["flops"]))
        assert float(ours["ref_top1"]) == pytest.approx(float(published["top1"]))
        assert float(ours["ref_memory_mib"]) == pytest.approx(float(published["gpu_memory_gb"]) * 1024)
        assert float(ours["top1"]) == pytest.approx(float(published["top1"]))
    assert rows[-1]["run_dir"] == "10"
    # Markdown: published figures side by side
    assert "| vgg16_conv | cifar | 14.7M / 14.7M | 626M / 626M |" in report.markdown
    assert "| ghostnet_ghost | imagenet | 3.88M / 3.88M | 11M / 11M |" in report.markdown
    assert "83.9‡ / 83.9" in report.markdown  # written in the old format: a per-class mean, marked
    assert not report.notes
    for name in ("top1_vs_flops", "top1_vs_latency", "flops_vs_latency"):
        assert_valid_png(report.files[name])
        assert f"({name}.png)" in report.markdown
    assert (ghost_vs_dwpw_multirun / "report.md").read_text() == report.markdown


def test_missing_values_are_dashes_and_plots_without_data_are_skipped(tmp_path):
    bare = {
        "model": "shufflenet_v2",
        "conv": None,
        "groups": None,
        "width": 0.5,
        "stem": "cifar",
        "data": "cifar10",
        "test/acc": 0.9,
    }  # today's metrics.json: no profile keys
    write_run(tmp_path / "runs" / "a", bare)
    write_run(
        tmp_path / "runs" / "b", {**bare, "model": "mobilenet_v2", "width": 1.0, "test/acc": None, "val/acc_best": 0.7}
    )
    report = make_report([tmp_path / "runs"], out_dir=tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "report.csv")
    assert list(rows[0])[: len(MAIN_COLUMNS)] == MAIN_COLUMNS and "ref_model" not in rows[0]
    assert [r["model"] for r in rows] == ["shufflenet_v2_x0.5", "mobilenet_v2"]
    assert rows[0]["params"] == "" and rows[0]["top1"] == "90.0"
    assert rows[1]["top1"] == "70.0" and rows[1]["top1_split"] == "val"
    assert "| shufflenet_v2_x0.5 | cifar | - | - | - | - | - | - | 90.0‡ |" in report.markdown
    assert "70.0†" in report.markdown
    assert not [p for p in report.files.values() if p.suffix == ".png"]
    assert any("top1_vs_flops skipped" in note for note in report.notes)
    assert any("top1_vs_latency skipped" in note for note in report.notes)


def test_speed_table_shows_latency_throughput_and_memory_only_when_measured(tmp_path):
    # metrics_for sets p90 = 1.1 x latency, 900 inference and 5000 training img/s, 4096 MiB training memory
    write_run(
        tmp_path / "runs" / "a",
        metrics_for(
            "shufflenet_v2",
            width=0.5,
            latency=9.5,
            batch_size=64,
            **{"memory/infer_peak_mib": 141.2, "input_size": "3x32x32"},
        ),
    )
    write_run(tmp_path / "runs" / "b", {"model": "mobilenet_v2", "width": 1.0, "stem": "cifar", "test/acc": 0.9})
    markdown = make_report([tmp_path / "runs"], out_dir=tmp_path / "out", plots=False).markdown
    assert "| model | latency ms (p90) | infer img/s | train img/s | infer memory | train memory |" in markdown
    assert "| shufflenet_v2_x0.5 | 9.5 (10.5) | 900 | 5000 | 141 MiB | 4 GiB | 64 | 3x32x32 | 2 |" in markdown
    assert "| mobilenet_v2 | - | - | - | - | - | - | - | - |" in markdown
    write_run(tmp_path / "bare" / "c", {"model": "mobilenet_v2", "width": 1.0, "stem": "cifar", "test/acc": 0.9})
    assert "Speed on" not in make_report([tmp_path / "bare"], out_dir=tmp_path / "out2", plots=False).markdown


def test_runtime_table_marks_a_contended_measurement_and_a_failed_runtime(tmp_path):
    onnx = {"latency/onnxruntime_ms": 1.0, "latency/onnxruntime_p90_ms": 1.2}
    failed = {"latency/onnxruntime_contended": True, "onnxruntime_int8/error": "RuntimeError: no int8 kernel"}
    write_run(tmp_path / "a", metrics_for("vgg16", "standard", latency=5.0, **onnx, **failed))
    write_run(tmp_path / "b", metrics_for("vgg16", "dwpw", latency=5.0, **onnx, **{"latency/onnxruntime_int8_ms": 0.5}))
    markdown = make_report([tmp_path], out_dir=tmp_path / "out", plots=False).markdown
    assert "| model | eager ms (p90) | onnxruntime ms (p90) | onnxruntime_int8 ms (p90) |" in markdown
    assert "| vgg16_conv | 5 (5.5) | 1 (1.2)* | failed | onnxruntime x5.0 |" in markdown
    assert "| vgg16_dwpw | 5 (5.5) | 1 (1.2) | 0.5 | onnxruntime_int8 x10.0 |" in markdown


def test_imagenet_reference_matches_family_width_groups_resolution(tmp_path):
    common = dict(data="imagenet", stem="imagenet", input_size=224)
    write_run(tmp_path / "0", metrics_for("shufflenet_v1", groups=8, width=0.5, **common))
    write_run(tmp_path / "1", metrics_for("mobilenet_v2", width=1.4, **common))
    write_run(tmp_path / "2", metrics_for("mobilenet_v2", width=1.0, **{**common, "input_size": "1x3x192x192"}))
    write_run(tmp_path / "3", metrics_for("vgg16", conv="standard"))  # not in the table
    reference = load_reference(IMAGENET)
    assert reference.kind == "imagenet"
    report = make_report([tmp_path], reference=IMAGENET, out_dir=tmp_path / "out", plots=False)
    rows = {r["model"]: r for r in read_csv(tmp_path / "out" / "report.csv")}
    assert rows["shufflenet_v1_g8_x0.5"]["ref_top1"] == "58.8"
    assert float(rows["shufflenet_v1_g8_x0.5"]["ref_flops"]) == pytest.approx(2 * 40e6)  # FLOPs = 2 x MACs
    assert float(rows["shufflenet_v1_g8_x0.5"]["ref_params"]) == 1010448
    assert rows["mobilenet_v2_x1.4"]["ref_top1"] == "74.7"
    assert rows["mobilenet_v2"]["ref_model"] == "" and rows["vgg16_conv"]["ref_model"] == ""
    assert any("no row of imagenet_published.csv for: " in n and "vgg16_conv" in n for n in report.notes)


def test_a_ghostnet_with_the_wrong_stem_is_not_matched(tmp_path):
    write_run(tmp_path / "0", metrics_for("ghostnet", "ghost", stem="cifar"))
    report = make_report([tmp_path], reference=GHOST_VS_DWPW, plots=False)
    assert report.rows[0].reference is None
    assert any("ghostnet_ghost" in note for note in report.notes)


def run_report(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, str(ROOT / "report.py"), *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )


def test_report_py_prints_the_markdown_and_writes_the_files(ghost_vs_dwpw_multirun, tmp_path):
    out = tmp_path / "report"
    result = run_report(str(ghost_vs_dwpw_multirun), "--reference", str(GHOST_VS_DWPW), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("# lnrepro report")
    assert "| resnet34_dwpw | cifar | 2.58M / 2.58M | 283M / 283M |" in result.stdout
    assert result.stdout == (out / "report.md").read_text()
    assert len(read_csv(out / "report.csv")) == 9
    for name in ("top1_vs_flops", "top1_vs_latency", "flops_vs_latency"):
        assert_valid_png(out / f"{name}.png")


@pytest.mark.parametrize("make_args", [lambda d: [str(d)], lambda d: [str(d / "does-not-exist")]])
def test_report_py_without_metrics_is_one_line_and_non_zero(tmp_path, make_args):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    result = run_report(*make_args(tmp_path / "empty"))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_report_py_names_a_test_acc_that_is_not_a_number_on_stderr_and_exits_0(tmp_path):
    write_run(tmp_path / "runs" / "a", metrics_for("vgg16", "standard", top1="n/a", **{"val/acc_best": 0.9}))
    result = run_report(str(tmp_path / "runs"), "--no-plots", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert "/a/metrics.json: test/acc is 'n/a', not a number: this run is left out of the top-1 figures" in warning
    assert "| vgg16_conv | cifar |" in result.stdout and "90.0" not in result.stdout  # val/acc_best does not stand in
    assert "Traceback" not in result.stderr


def test_make_report_without_metrics_raises(tmp_path):
    with pytest.raises(ReportError, match="no metrics.json found"):
        make_report([tmp_path])


def report_cli(capsys, *args: str) -> tuple[int, str, list[str]]:
    """`lnrepro-report ARGS` in this process: exit status, stdout, and stderr's lines but the `written:` one."""
    from lnrepro.cli import report

    status = report(list(args))
    out, err = capsys.readouterr()
    return status, out, [line for line in err.splitlines() if line and not line.startswith("written: ")]


def test_reference_ghost_vs_dwpw_by_name_matches_all_nine_rows_without_a_warning(ghost_vs_dwpw_multirun, capsys):
    status, out, err = report_cli(capsys, str(ghost_vs_dwpw_multirun), "--reference", "ghost_vs_dwpw", "--no-plots")
    assert status == 0 and err == []
    assert "published figures from `ghost_vs_dwpw.csv`" in out
    assert "| resnet34_dwpw | cifar | 2.58M / 2.58M | 283M / 283M |" in out
    assert "no row of" not in out and "with no run" not in out


def test_reference_seed_still_works_with_one_line_naming_ghost_vs_dwpw(ghost_vs_dwpw_multirun, tmp_path, capsys):
    dirs = [str(ghost_vs_dwpw_multirun), "--no-plots"]
    _, current, _ = report_cli(capsys, *dirs, "--reference", "ghost_vs_dwpw", "--out", str(tmp_path / "current"))
    status, out, err = report_cli(capsys, *dirs, "--reference", "seed", "--out", str(tmp_path / "deprecated"))
    assert status == 0 and out == current  # the same report
    (warning,) = err
    assert warning.startswith("warning: ") and "deprecated" in warning and "--reference ghost_vs_dwpw" in warning
    assert load_reference("seed").kind == "ghost_vs_dwpw" and shipped_table("seed") == GHOST_VS_DWPW


def test_report_help_lists_ghost_vs_dwpw_and_not_seed_as_a_table(capsys):
    from lnrepro.cli import report

    with pytest.raises(SystemExit) as exited:
        report(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the option help
    epilog = text.split("Published tables shipped with lnrepro (--reference NAME): ", 1)[1]
    from lnrepro.reporting.reference import SHIPPED_TABLES

    names = [entry.split(":")[0] for entry in epilog.split("; ")]
    assert names[:3] == ["ghost_vs_dwpw", "imagenet", "cifar10"] and names == list(SHIPPED_TABLES)  # + the ablations
    assert f"side by side: {', '.join(SHIPPED_TABLES)} or a CSV path" in text
    assert "seed," not in text and "seed:" not in text


def test_report_plots_and_table_go_to_wandb_offline(ghost_vs_dwpw_multirun, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lnrepro.reporting import log_to_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    report = make_report([ghost_vs_dwpw_multirun], reference=GHOST_VS_DWPW, out_dir=tmp_path / "out")
    run_dir = Path(log_to_wandb(report, group="train/2026-11-23_20-00-00"))
    offline = run_dir.parent
    assert offline.name.startswith("offline-run-")
    (wandb_file,) = offline.glob("*.wandb")
    assert wandb_file.stat().st_size > 0
    for name in ("top1_vs_flops", "top1_vs_latency", "flops_vs_latency"):
        (image,) = (run_dir / "media" / "images" / "report").glob(f"{name}_*.png")
        assert image.read_bytes()[:8] == PNG_SIGNATURE
    assert list((run_dir / "media").rglob("*.table.json"))


@pytest.mark.slow
def test_ghost_vs_dwpw_preset_multirun_then_report_gives_nine_matched_rows(tmp_path):
    """`train.py -m experiment=ghost_vs_dwpw_cifar10` on tiny synthetic data, then report.py beside its table."""
    quick = [
        "data=synthetic",
        "data.train_size=32",
        "data.val_size=16",
        "data.test_size=16",
        "data.batch_size=16",
        "profile.calibration_images=16",  # int8 calibrates on at most the 32 training images
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "~callbacks.rich_progress_bar",
        "print_config=false",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    trained = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            "experiment=ghost_vs_dwpw_cifar10",
            f"paths.log_dir={tmp_path}",
            *quick,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=1200,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "train" / "multiruns").iterdir()
    result = run_report(str(sweep_dir), "--reference", str(GHOST_VS_DWPW))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_csv(sweep_dir / "report.csv")
    assert [r["model"] for r in rows] == [r["ref_model"] for r in rows] == [r["model"] for r in read_csv(GHOST_VS_DWPW)]
    for row in rows:
        if row["params"]:  # once the profile keys are in metrics.json: the table's conv-only counts
            assert float(row["params"]) == pytest.approx(float(row["ref_params"]), rel=0.01)
            assert float(row["flops"]) == pytest.approx(float(row["ref_flops"]), rel=0.02)


def test_an_ablation_table_matches_runs_by_their_recorded_options(tmp_path):
    """A table's option columns (here `shallow`, and `conv`) are conditions on what the run recorded; an empty
    cell matches anything; a column the run has no record of (`note`) is not a condition."""
    table = tmp_path / "ablation.csv"
    table.write_text(
        "model,width,conv,shallow,params,macs_m,top1,note\n"
        "mobilenet_v1,0.75,dwpw,false,2.6M,325,68.4,baseline\n"
        "mobilenet_v1,1.0,dwpw,true,2.9M,307,65.3,shallow\n"
        "mobilenet_v1,1.0,standard,,29.3M,4866,71.7,conv\n"
    )
    runs = {
        "narrow": {"width": 0.75, "conv": "dwpw", "model/shallow": False},
        "shallow": {"width": 1.0, "conv": "dwpw", "model/shallow": True},
        "full_conv": {"width": 1.0, "conv": "standard", "model/shallow": False},
        "deep": {"width": 1.0, "conv": "dwpw", "model/shallow": False},  # no row: shallow differs from row 2
    }
    for name, facts in runs.items():
        write_run(tmp_path / "runs" / name, {**metrics_for("mobilenet_v1"), **facts})
    reference = load_reference(table)
    matched = {path.parent.name: reference.match(read_run(path)) for path in (tmp_path / "runs").glob("*/metrics.json")}
    assert matched == {"narrow": 0, "shallow": 1, "full_conv": 2, "deep": None}
