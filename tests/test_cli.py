"""train.py / eval.py as a user runs them: exit codes, one-line errors, multiruns, loggers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

QUICK = [
    "data=synthetic",
    "data.train_size=32",
    "data.val_size=16",
    "data.test_size=16",
    "data.batch_size=16",
    "profile.calibration_images=16",  # int8 calibrates on at most the 32 training images
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.enable_progress_bar=false",  # as it reads: the default callbacks' progress bar is left out
    "print_config=false",
    "model.width=0.5",
]


def run_script(script: str, *args: str, log_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    flags = [a for a in args if a.startswith("-")]  # Hydra's own flags (-m) come before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    return subprocess.run(
        [sys.executable, str(ROOT / script), *flags, f"paths.log_dir={log_dir}", *overrides],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


def test_unknown_model_lists_the_choices(tmp_path):
    result = run_script("train.py", "model=resnet999", log_dir=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'model/resnet999'" in result.stderr
    for family in ("ghostnet", "mobilenet_v2", "shufflenet_v1", "vgg16"):
        assert family in result.stderr


def refused_in_process(capsys, tmp_path, overrides: list[str]) -> str:
    """The train task run as `lnrepro-train` runs it (`run_task`), in this process: the last stderr line of a
    refusal, after checking its exit status is 2. One real process per entry point proves the status reaches the
    shell (`test_a_bad_value_ends_the_process_with_one_line_and_exit_2`); the other refusals need no process of
    their own, whose start alone (importing torch and Lightning) costs several seconds here."""
    from lnrepro.tasks import run_task, train
    from tests.conftest import compose_config

    cfg = compose_config("train", tmp_path / "run", overrides)
    with pytest.raises(SystemExit) as exited:
        run_task(train, cfg)
    assert exited.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_bad_value_ends_the_process_with_one_line_and_exit_2(tmp_path):
    result = run_script("train.py", *QUICK, "model.width=-1", log_dir=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and "width must be > 0" in last_line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["model=shufflenet_v1", "model.groups=5"], "groups=5"),
        (["data=cifar10", "data.root=/nonexistent/cifar", "data.download=false"], "data.root"),
        (["data.batch_size=0"], "data.batch_size must be a positive integer"),
    ],
)
def test_bad_values_end_with_one_line_and_exit_2(capsys, tmp_path, args, message):
    quick = [a for a in QUICK if not (a.startswith("data.") and any(x.startswith("data=") for x in args))]
    last_line = refused_in_process(capsys, tmp_path, [*quick, *args])
    assert last_line.startswith("error: ") and message in last_line


def test_train_then_eval_is_proven_by_the_console_scripts():
    """Training then evaluating from the command line (the eval's top-1 equals the run's) is
    tests/test_package.py::test_console_scripts_from_the_wheel_work_from_any_directory; train.py and eval.py are
    those same entry points (`lnrepro.cli`), which the process tests here start."""
    for script, entry in (("train.py", "train"), ("eval.py", "evaluate")):
        assert f"from lnrepro.cli import {entry}" in (ROOT / script).read_text()


def test_eval_of_a_corrupt_checkpoint_is_one_line(tmp_path):
    corrupt = tmp_path / "bad.ckpt"
    corrupt.write_text("not a checkpoint")
    result = run_script("eval.py", f"ckpt_path={corrupt}", log_dir=tmp_path)
    assert result.returncode == 2
    assert "cannot be read" in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_multirun_sweeps_widths_and_survives_a_failing_job(tmp_path):
    result = run_script(
        "train.py",
        "-m",
        *[a for a in QUICK if not a.startswith("model.width")],
        "model=mobilenet_v2",
        "model.width=0.5,-1,1.0",
        log_dir=tmp_path,
    )
    # the job with width -1 fails; the others still run, and the sweep reports the failure
    assert result.returncode != 0
    sweeps = list(tmp_path.glob("train/multiruns/*"))
    assert len(sweeps) == 1, result.stderr[-3000:]
    (sweep,) = sweeps
    finished = sorted(json.loads(p.read_text())["width"] for p in sweep.glob("*/metrics.json"))
    assert finished == [0.5, 1.0]
    assert (sweep / "1" / "train.log").read_text().count("width must be > 0") >= 1


def test_wandb_offline_run_writes_its_files(make_train_cfg, tmp_path):
    from lnrepro.tasks import train

    cfg = make_train_cfg("logger=wandb", "model=shufflenet_v2", "model.width=0.5", "trainer.max_epochs=2")
    train(cfg)
    (run_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    (records,) = run_dir.glob("run-*.wandb")
    from tests.wandb_offline import complete_records

    complete_records(records)  # finish() returns before wandb-core has written the file's last block
    content = records.read_bytes()
    # the protobuf records hold the metric names and the config values as plain UTF-8
    for needle in (b"val/acc", b"test/acc", b"train/loss", b"shufflenet_v2", b"lnrepro"):
        assert needle in content, needle


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_splits_the_data(tmp_path):
    result = run_script(
        "train.py",
        *QUICK,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "data.train_size=64",
        "trainer.max_epochs=2",
        log_dir=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics_path,) = tmp_path.glob("train/runs/*/metrics.json")
    metrics = json.loads(metrics_path.read_text())
    # 64 images, global batch 16 = 2 processes x 8: 4 steps per epoch, as in one process with batch 16
    assert metrics["global_step"] == 8 and metrics["epochs"] == 2
    assert (metrics["world_size"], metrics["batch_size_global"], metrics["batch_size_per_process"]) == (2, 16, 8)


@pytest.mark.slow
def test_optuna_search_runs_trials_on_the_returned_metric(tmp_path):
    result = run_script(
        "train.py",
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=1",
        *QUICK,
        log_dir=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = tmp_path.glob("train/multiruns/*")
    assert len(list(sweep.glob("*/metrics.json"))) == 2
    optimization = (sweep / "optimization_results.yaml").read_text()
    assert "best_value" in optimization and "optimizer.lr" in optimization


def test_runs_started_at_the_same_moment_get_their_own_directories(tmp_path):
    """Two `train.py &` at once (one per GPU, or a job array) and two multiruns: no run overwrites another."""
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    quick = [*QUICK, "train=false", "test=false", "profile.end_of_fit=false", f"paths.log_dir={tmp_path}"]
    commands = [[sys.executable, str(ROOT / "train.py"), *quick, f"seed={seed}"] for seed in range(2)]
    commands += [[sys.executable, str(ROOT / "train.py"), "-m", *quick, f"seed={seed}"] for seed in (10, 11)]
    processes = [
        subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stderr.read()[-2000:]
    written = sorted(json.loads(path.read_text())["seed"] for path in tmp_path.rglob("metrics.json"))
    assert written == [0, 1, 10, 11]
    assert len(list(tmp_path.glob("train/runs/*"))) == 2 and len(list(tmp_path.glob("train/multiruns/*"))) == 2


@pytest.mark.parametrize(
    "override, named",
    [
        ("profile.calibration_images=1000", "more than the 32 training images"),
        ("profile.calibration_images=0", "profile.calibration_images=0"),
        ("profile.runtimes=[eager,tflite]", "unknown runtime 'tflite'"),
    ],
)
def test_bad_runtime_settings_are_refused_before_training(capsys, tmp_path, override, named):
    assert named in refused_in_process(capsys, tmp_path, [*QUICK, override])
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing was trained
