"""Scale-out on real engines, with real processes and no mocks: a SLURM sweep, a DDP job, a failing job, a killed
job and requeues on a real one-node SLURM cluster (scripts/slurm-local.sh), and DDP inside a local multirun.

`make test-cluster` runs these (`.ci/run` brings the cluster up before and down after); `make test` leaves them
out (marker `cluster`). The SLURM tests skip, with the script's reason, only where the cluster cannot start
(slurm-local.sh exits 3: not root and SLURM not installed); any other failure to start is a failure.
Every job is tiny (64 synthetic 16x16 images, ShuffleNet V2 0.25x) so that it takes seconds of training.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.cluster

SLURM_SCRIPT = ROOT / "scripts" / "slurm-local.sh"
TRAIN = Path(sys.executable).parent / "lnrepro-train"  # the console script a cluster user types
TINY = [
    "data=synthetic",
    "data.train_size=64",
    "data.val_size=32",
    "data.test_size=32",
    "data.batch_size=16",
    "data.image_size=16",
    "optimizer.lr=0.01",
    "trainer.enable_progress_bar=false",
    "~callbacks.rich_progress_bar",
    "trainer.enable_model_summary=false",
    "profile.end_of_fit=false",
]
STEPS_PER_EPOCH = 64 // 16
SAME = ["global_step", "epochs", "test/acc", "test/loss", "val/acc", "val/loss", "val/acc_best", "train/loss_epoch"]


def bring_up(script: Path = SLURM_SCRIPT) -> bool:
    """`slurm-local.sh up`; True when this call started the cluster. Exit 3 (it cannot start here) skips the test
    with the script's reason; any other failure fails it."""
    result = subprocess.run(["bash", str(script), "up"], capture_output=True, text=True, timeout=900)
    said = (result.stdout + result.stderr).strip()
    if result.returncode == 3:
        pytest.skip(f"no local SLURM cluster here: {said.splitlines()[-1] if said else 'slurm-local.sh exit 3'}")
    if result.returncode != 0:
        pytest.fail(f"the local SLURM cluster did not start (exit {result.returncode}):\n{said}")
    return "already up" not in said


@pytest.fixture(scope="session")
def slurm():
    """The local cluster: up for the session (left up if it was up already, as `.ci/run` does)."""
    started_here = bring_up()
    yield
    if started_here:
        subprocess.run(["bash", str(SLURM_SCRIPT), "down"], capture_output=True, text=True, timeout=300)


def environment() -> dict[str, str]:
    # The jobs inherit this (sbatch exports the submitting environment): tests.helpers importable, W&B offline.
    return {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HYDRA_FULL_ERROR": "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def sweep_command(log_dir: Path, *overrides: str, launcher: str = "slurm") -> list[str]:
    return [str(TRAIN), "-m", f"hydra/launcher={launcher}", f"paths.log_dir={log_dir}", *overrides]


def sweep(log_dir: Path, *overrides: str, launcher: str = "slurm") -> subprocess.CompletedProcess:
    return subprocess.run(
        sweep_command(log_dir, *overrides, launcher=launcher),
        capture_output=True,
        text=True,
        env=environment(),
        cwd=ROOT,
        timeout=900,
    )


def sweep_dir(log_dir: Path) -> Path:
    (found,) = (log_dir / "train" / "multiruns").iterdir()
    return found


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def job_folder(runs: Path, number: int, jobs: int) -> Path:
    """submitit's folder of job `number`: <array id>_<number> for a sweep of several jobs, <job id> for one."""
    folders = [f for f in (runs / ".submitit").iterdir() if f.is_dir()]
    if jobs == 1:
        (folder,) = folders
        return folder
    (folder,) = [f for f in folders if f.name.endswith(f"_{number}")]
    return folder


def tail(result: subprocess.CompletedProcess) -> str:
    return f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"


# --- SLURM -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def width_sweep(slurm, tmp_path_factory):
    """`lnrepro-train -m hydra/launcher=slurm hydra.launcher.partition=debug model.width=0.25,0.5`: two jobs."""
    log_dir = tmp_path_factory.mktemp("width_sweep")
    result = sweep(log_dir, "hydra.launcher.partition=debug", *TINY, "trainer.max_epochs=2", "model.width=0.25,0.5")
    assert result.returncode == 0, tail(result)
    return sweep_dir(log_dir), result


def test_a_width_sweep_runs_as_two_slurm_jobs(width_sweep):
    runs, result = width_sweep
    said = result.stdout + result.stderr
    first, second = metrics_of(runs / "0"), metrics_of(runs / "1")
    assert (first["width"], second["width"]) == (0.25, 0.5)
    assert first["slurm/job_id"] != second["slurm/job_id"]  # each its own SLURM job...
    assert first["slurm/array_job_id"] == second["slurm/array_job_id"]  # ... of one array
    assert (first["slurm/array_task_id"], second["slurm/array_task_id"]) == (0, 1)
    for metrics in (first, second):
        assert metrics["world_size"] == 1 and metrics["batch_size_global"] == metrics["batch_size_per_process"] == 16
        assert metrics["global_step"] == 2 * STEPS_PER_EPOCH and metrics["slurm/restart_count"] == 0
    # where each job's log is, said when the jobs are submitted
    for number in (0, 1):
        assert f"#{number} : job {first['slurm/array_job_id']}_{number}, log {runs}/.submitit/" in said


def test_a_two_task_job_runs_ddp_on_two_processes(slurm, width_sweep, tmp_path):
    """One SLURM job, two tasks, DDP over gloo: the same steps as one process with the same global batch, each
    rank trains on its own half of every epoch in an order of its own, and rank 0 alone speaks for the run."""
    indices = tmp_path / "indices"
    result = sweep(
        tmp_path,
        "hydra.launcher.partition=debug",
        "hydra.launcher.tasks_per_node=2",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        *TINY,
        "trainer.max_epochs=2",
        "model.width=0.25",
        "logger=wandb",
        "+callbacks.indices._target_=tests.helpers.RecordTrainIndices",
        f"+callbacks.indices.out_dir={indices}",
    )
    assert result.returncode == 0, tail(result)
    runs = sweep_dir(tmp_path)
    metrics = metrics_of(runs / "0")
    one_process = metrics_of(width_sweep[0] / "0")  # width 0.25, the same data and data.batch_size
    assert metrics["world_size"] == 2
    assert (metrics["batch_size_global"], metrics["batch_size_per_process"]) == (16, 8)
    assert metrics["global_step"] == one_process["global_step"] == 2 * STEPS_PER_EPOCH
    assert metrics["slurm/job_id"] and "slurm/array_job_id" not in metrics  # a sweep of one job is no array

    ranks = [json.loads((indices / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for epoch in ("0", "1"):
        zero, one = ranks[0]["epochs"][epoch], ranks[1]["epochs"][epoch]
        assert len(zero) == len(one) == 32 and not set(zero) & set(one)  # different images...
        assert sorted(zero + one) == list(range(64))  # ... the whole training set between them
    for rank in ranks:
        assert rank["epochs"]["0"] != rank["epochs"]["1"]  # a new order every epoch

    folder = job_folder(runs, 0, jobs=1)
    logs = {task: (folder / f"{folder.name}_{task}_log.out").read_text() for task in (0, 1)}
    assert "SyntheticDataModule" in logs[0] and "SyntheticDataModule" not in logs[1]  # the config, printed once
    assert "global batch 16 = 2 processes x 8" in logs[0]
    assert len(list((runs / "0" / "wandb").glob("offline-run-*"))) == 1  # one W&B run per job, not per rank


def test_a_failed_job_is_named_with_its_log_and_the_other_job_finishes(slurm, tmp_path):
    result = sweep(tmp_path, "hydra.launcher.partition=debug", *TINY, "trainer.max_epochs=1", "model.width=0,0.25")
    assert result.returncode != 0
    runs = sweep_dir(tmp_path)
    assert metrics_of(runs / "1")["width"] == 0.25  # the possible job ran to its end
    assert not (runs / "0" / "metrics.json").exists()
    assert "1 of 2 jobs of the sweep failed" in result.stderr, tail(result)
    assert "job #0 (model.width=0) failed: UserInputError: width must be > 0 (got 0)" in result.stderr
    log = Path(re.search(r"job #0 .*\n\s+log: (\S+)", result.stderr).group(1))
    assert log.parent == job_folder(runs, 0, jobs=2) and log.is_file()
    assert "width must be > 0" in (log.parent / log.name.replace("_log.err", "_log.out")).read_text()
    assert "Traceback" not in result.stderr


def test_a_killed_job_is_named_with_its_log_not_waited_for_forever(slurm, tmp_path):
    """A job that dies without a result (here cancelled while its setup line runs): the cluster keeps no
    accounting, so submitit alone would wait for its result file forever."""
    command = sweep_command(
        tmp_path, "hydra.launcher.partition=debug", "hydra.launcher.setup=[sleep 600]", *TINY, "model.width=0.25"
    )
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(), cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(tmp_path.glob("train/multiruns/*/.submitit/*/*.sh")):
            time.sleep(0.2)
        job_id = job_folder(sweep_dir(tmp_path), 0, jobs=1).name
        assert subprocess.run(["scancel", job_id], timeout=60).returncode == 0
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    assert "1 of 1 jobs of the sweep failed" in stderr, stderr[-3000:]
    assert re.search(
        r"job #0 \(.*model\.width=0\.25.*\) failed: the job ended without a result \(SLURM state "
        r"CANCELLED",
        stderr,
    ), stderr[-3000:]
    assert f"log: {job_folder(sweep_dir(tmp_path), 0, jobs=1)}/{job_id}_0_log.err" in stderr


@pytest.mark.parametrize("stop", ["scontrol requeue", "SIGUSR2"])
def test_a_job_requeued_mid_training_resumes_and_ends_as_if_never_stopped(slurm, tmp_path, stop):
    """Two identical jobs; job #1 is requeued once its first last.ckpt exists, mid-epoch: by hand (`scontrol
    requeue`), or by submitit on the signal SLURM sends before a time limit or a preemption (SIGUSR2: submitit
    re-pickles the job and requeues it). SLURM runs it again in the same run directory; it continues from
    last.ckpt and must end with job #0's numbers."""
    slow = [
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "+callbacks.slow._target_=tests.helpers.SlowTraining",
        "+callbacks.slow.seconds=0.5",
        "trainer.max_epochs=3",
        "model.width=0.25",
    ]
    command = sweep_command(tmp_path, "hydra.launcher.partition=debug", *TINY, *slow, "seed=42,42")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(), cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 600
        checkpoint = None
        while time.monotonic() < deadline and process.poll() is None:
            found = list((tmp_path / "train" / "multiruns").glob("*/1/checkpoints/last.ckpt"))
            if found:
                checkpoint = found[0]
                break
            time.sleep(0.2)
        assert checkpoint is not None, "job #1 wrote no last.ckpt"
        job_id = job_folder(sweep_dir(tmp_path), 1, jobs=2).name
        by = ["scontrol", "requeue", job_id] if stop == "scontrol requeue" else ["scancel", "--signal=USR2", job_id]
        requeued = subprocess.run(by, capture_output=True, text=True, timeout=60)
        assert requeued.returncode == 0, requeued.stderr
        stdout, stderr = process.communicate(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-5000:]}"

    runs = sweep_dir(tmp_path)
    uninterrupted, requeued_run = metrics_of(runs / "0"), metrics_of(runs / "1")
    assert requeued_run["slurm/restart_count"] == 1 and uninterrupted["slurm/restart_count"] == 0
    assert requeued_run["resumed_from"] == str(checkpoint) and uninterrupted["resumed_from"] is None
    log = (job_folder(runs, 1, jobs=2) / f"{job_id}_0_log.out").read_text()
    (resumed_step,) = [int(s) for s in re.findall(r"resuming from \S+last\.ckpt \(epoch \d+, step (\d+)\)", log)]
    assert 0 < resumed_step < requeued_run["global_step"]  # it was stopped in the middle of training
    if stop == "SIGUSR2":
        assert "Caught signal SIGUSR2" in log and "this job is preempted" in log
    assert requeued_run["global_step"] == uninterrupted["global_step"] == 3 * STEPS_PER_EPOCH
    for key in SAME:
        assert requeued_run[key] == pytest.approx(uninterrupted[key], rel=0, abs=1e-6), key
    print(
        f"\n{stop}: resumed at step {resumed_step}: "
        + ", ".join(f"{key} {uninterrupted[key]} vs {requeued_run[key]}" for key in SAME)
    )


# --- DDP inside a multirun on one machine -------------------------------------------------------------------------
def test_ddp_inside_a_local_sweep_runs_each_job_once_on_its_own_processes(tmp_path):
    """hydra/launcher=local starts each job's processes itself (tasks_per_node); Lightning's own launcher, which
    runs the command line again, would have started the whole sweep again in every process."""
    result = sweep(
        tmp_path,
        "hydra.launcher.tasks_per_node=2",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        *TINY,
        "trainer.max_epochs=1",
        "print_config=false",
        "model.width=0.25,0.5",
        launcher="local",
    )
    assert result.returncode == 0, tail(result)
    assert len(list((tmp_path / "train" / "multiruns").iterdir())) == 1
    runs = sweep_dir(tmp_path)
    assert sorted(p.parent.name for p in runs.glob("*/metrics.json")) == ["0", "1"]
    for number, width in ((0, 0.25), (1, 0.5)):
        metrics = metrics_of(runs / str(number))
        assert (metrics["width"], metrics["world_size"], metrics["batch_size_per_process"]) == (width, 2, 8)
        assert metrics["global_step"] == STEPS_PER_EPOCH and "slurm/job_id" not in metrics


def test_ddp_that_would_rerun_the_command_line_is_refused_inside_a_plain_multirun(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            f"paths.log_dir={tmp_path}",
            *TINY,
            "model.width=0.25",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "print_config=false",
        ],
        capture_output=True,
        text=True,
        env=environment(),
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode != 0
    # the sweep's ending: one line per failed job (hydra_plugins/lnrepro_launchers: SequentialLauncher)
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("job #0") and "failed: " in line]
    assert "would start the whole sweep again in every process" in line
    assert "hydra/launcher=local hydra.launcher.tasks_per_node=2" in line and "hydra/launcher=slurm" in line
    assert not list(tmp_path.rglob("metrics.json")) and "Initializing distributed" not in result.stderr
