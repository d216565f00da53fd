"""Every way a run can stop is a clean stop (issue 18): SIGTERM and SIGINT, a damaged checkpoint on restart, a
checkpoint's stored strings, and the chaos drill (slow) that kills runs at random points and resumes them."""

from __future__ import annotations

import json
import os
import random
import signal
import signal as signal_module
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from tests.conftest import ROOT
from tests.test_data_safety import folder_training, small_tree  # noqa: F401 (small_tree: a fixture)
from tests.test_reliability import RANDOM, TINY, assert_same_run, error_lines

# 4 steps of 16 images an epoch; a pause after each step leaves room to send a signal mid-epoch
SLOW_STEPS = ["+callbacks.slow._target_=tests.helpers.SlowTraining", "+callbacks.slow.seconds=0.2"]


def start(script: str, *overrides: str, log_dir: Path, tiny: bool = True, session: bool = False) -> subprocess.Popen:
    """`script` as a user starts it, one compute thread, output into files (a pipe nobody reads could stall it)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    env["OMP_NUM_THREADS"] = "1"
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(ROOT / script), f"paths.log_dir={log_dir}", *(TINY if tiny else []), *overrides]
    with open(log_dir / "stdout.txt", "w") as stdout, open(log_dir / "stderr.txt", "w") as stderr:
        return subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=ROOT, start_new_session=session)


def wait_for(
    process: subprocess.Popen, log_dir: Path, pattern: str, text: str | None = None, poll_s: float = 0.02
) -> Path:
    """Wait until a file matching `pattern` under `log_dir` exists (and holds `text`); the process must still run."""
    timeout = 300
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in log_dir.glob(pattern):
            if text is None or text in path.read_text(errors="replace"):
                return path
        assert process.poll() is None, (log_dir / "stderr.txt").read_text()[-3000:]
        time.sleep(poll_s)
    raise AssertionError(f"{pattern} ({text}) did not appear in {timeout} s")


def finish(process: subprocess.Popen, log_dir: Path) -> tuple[int, str]:
    try:
        status = process.wait(timeout=300)
    finally:
        process.kill()
    return status, (log_dir / "stderr.txt").read_text()


def run_dir_of(log_dir: Path, task: str = "train") -> Path:
    (run,) = log_dir.glob(f"{task}/runs/*")
    return run


def metrics_in(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def resume(line: str) -> str:
    """The `ckpt_path=` the interrupted run's line says to resume with."""
    assert "resume: " in line, line
    return line.rsplit("ckpt_path=", 1)[1].strip("'")


# --------------------------------------------------------------------------------------------------------------------
# SIGTERM and SIGINT
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sent, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_epoch_saves_a_checkpoint_says_how_to_resume_and_exits_128_plus_it(tmp_path, sent, status):
    common = ["trainer.max_epochs=2", *RANDOM]
    process = start("train.py", *common, *SLOW_STEPS, log_dir=tmp_path / "stopped")
    wait_for(process, tmp_path / "stopped", "train/runs/*/csv/metrics.csv", "train/")  # after the first steps
    process.send_signal(sent)
    got, stderr = finish(process, tmp_path / "stopped")
    assert got == status, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith("interrupted:")]
    assert f"stopped by {signal.Signals(sent).name} during training" in line and "Traceback" not in stderr
    run = run_dir_of(tmp_path / "stopped")
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert resume(line) == str(checkpoint) and "python train.py" in line
    state = torch.load(checkpoint, weights_only=True)
    assert 0 < state["global_step"] < 8 and not (run / "metrics.json").exists()  # nothing half-done
    assert not list(run.rglob("*.tmp"))

    if sent == signal.SIGTERM:  # the checkpoint resumes to the uninterrupted run's numbers
        resumed = start("train.py", *common, f"ckpt_path={checkpoint}", log_dir=tmp_path / "resumed")
        full = start("train.py", *common, log_dir=tmp_path / "full")
        assert finish(resumed, tmp_path / "resumed")[0] == 0
        assert finish(full, tmp_path / "full")[0] == 0
        assert_same_run(metrics_in(run_dir_of(tmp_path / "full")), metrics_in(run_dir_of(tmp_path / "resumed")))


def test_eval_and_profile_stop_with_one_line_and_143(tmp_path, tiny_run):
    evaluating = start(
        "eval.py",
        f"ckpt_path={tiny_run.last_checkpoint}",
        "+data.test_size=4096",
        "trainer.enable_progress_bar=false",
        log_dir=tmp_path / "eval",
        tiny=False,
    )
    wait_for(evaluating, tmp_path / "eval", "eval/runs/*/eval.log", "GPU available")
    evaluating.send_signal(signal.SIGTERM)
    status, stderr = finish(evaluating, tmp_path / "eval")
    assert status == 143, stderr[-3000:]
    assert error_lines(stderr) == [] and "stopped by SIGTERM during evaluation; nothing was saved" in stderr

    profiling = start(
        "profile_net.py",
        "model=shufflenet_v2",
        "model.width=0.5",
        "profile.runs=100000",
        "profile.runtimes=[eager]",
        log_dir=tmp_path / "profile",
        tiny=False,
    )
    wait_for(profiling, tmp_path / "profile", "profile/runs/*/profile.log", "profiling")
    time.sleep(1.0)
    profiling.send_signal(signal.SIGTERM)
    status, stderr = finish(profiling, tmp_path / "profile")
    assert status == 143, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith("interrupted:")]
    assert "stopped by SIGTERM during profiling" in line and "Traceback" not in stderr


def test_ctrl_c_to_the_whole_process_group_stops_cleanly_with_loader_workers(small_tree, tmp_path):  # noqa: F811
    """Ctrl+C reaches every process of the terminal's group, DataLoader workers included: they must not die of it
    (the run would end with "worker exited unexpectedly"), the main process stops at the end of the step."""
    overrides = [item for item in TINY if not item.startswith("data")]
    overrides += folder_training(small_tree, "data.num_workers=1", "data.persistent_workers=true")
    overrides += ["trainer.max_epochs=3", "callbacks.last_checkpoint.every_n_train_steps=1", *SLOW_STEPS]
    process = start("train.py", *overrides, log_dir=tmp_path, tiny=False, session=True)
    wait_for(process, tmp_path, "train/runs/*/checkpoints/last.ckpt")
    os.killpg(process.pid, signal.SIGINT)
    status, stderr = finish(process, tmp_path)
    assert status == 130, stderr[-3000:]
    assert "stopped by SIGINT during training" in stderr and "exited unexpectedly" not in stderr
    assert "Traceback" not in stderr


class SignalAtStep(pl.Callback):
    """Send this process `signal` as the training step `step` starts."""

    def __init__(self, step: int, signal: str):
        self.step, self.signal = step, getattr(signal_module, signal)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)


def test_submitit_s_requeue_notice_waits_for_a_checkpoint_at_the_end_of_the_step(make_train_cfg, tmp_path):
    """SIGUSR2 in a SLURM job: submitit's handler requeues the job and exits wherever training is. It is called
    at the end of the step, after last.ckpt is saved there (here a stand-in for it records what it found)."""
    from lnrepro.tasks import run_task, train

    found = {}

    def submitit_handler(number, frame):  # what submitit's checkpoint_and_try_requeue does, after `scontrol requeue`
        found["step"] = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
        sys.exit(-1)

    cfg = make_train_cfg(
        "model.width=0.25",
        "data.image_size=16",
        "trainer.max_epochs=2",
        "+callbacks.notice._target_=tests.test_clean_stops.SignalAtStep",
        "+callbacks.notice.step=2",
        "+callbacks.notice.signal=SIGUSR2",
    )
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(SystemExit) as exited:
            run_task(train, cfg)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert exited.value.code == -1 and found["step"] == 3  # the step that was running finished and was saved


# --------------------------------------------------------------------------------------------------------------------
# Resume picks the furthest checkpoint that loads
# --------------------------------------------------------------------------------------------------------------------


def write_checkpoint(module, path: Path, step: int, epoch: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "epoch": epoch, "global_step": step}, path)
    return path


def damage(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


@pytest.fixture
def resume_case(make_train_cfg, tmp_path):
    """A run directory and the module its config builds: (make_cfg(*overrides), module, checkpoints folder)."""
    from lnrepro.tasks.train import build_module

    def make_cfg(*overrides: str):
        return make_train_cfg("model.width=0.25", "data.image_size=16", *overrides, output_dir=tmp_path / "run")

    module = build_module(make_cfg())
    return make_cfg, module, tmp_path / "run" / "checkpoints"


def test_resume_prefers_the_run_s_last_then_the_given_then_its_furthest_epoch_file(resume_case, tmp_path, caplog):
    from lnrepro.training.resume import resume_checkpoint

    make_cfg, module, checkpoints = resume_case
    given = write_checkpoint(module, tmp_path / "given.ckpt", step=3)
    write_checkpoint(module, checkpoints / "epoch_000.ckpt", step=4)
    write_checkpoint(module, checkpoints / "epoch_001.ckpt", step=8, epoch=1)
    last = write_checkpoint(module, checkpoints / "last.ckpt", step=10, epoch=2)

    cfg = make_cfg(f"ckpt_path={given}")
    assert resume_checkpoint(cfg, module)[1] == str(last) == cfg.ckpt_path

    damage(last)
    cfg = make_cfg(f"ckpt_path={given}")
    checkpoint, chosen = resume_checkpoint(cfg, module)
    assert chosen == str(given) and checkpoint["global_step"] == 3
    assert not last.exists() and (checkpoints / "last.ckpt.damaged").is_file()  # kept aside, never deleted
    assert "not resuming from" in caplog.text and "last.ckpt.damaged" in caplog.text

    # epoch files by the global step they hold, not by name or time: the newer-looking file is behind
    os.utime(checkpoints / "epoch_000.ckpt")
    assert resume_checkpoint(make_cfg(), module)[1] == str(checkpoints / "epoch_001.ckpt")
    damage(checkpoints / "epoch_001.ckpt")  # no step to read: tried last, so the good one wins before it
    assert resume_checkpoint(make_cfg(), module)[1] == str(checkpoints / "epoch_000.ckpt")


def test_a_given_file_is_never_renamed_and_none_loading_is_one_line(resume_case, tmp_path):
    from lnrepro.errors import UserInputError
    from lnrepro.training.resume import resume_checkpoint

    make_cfg, module, checkpoints = resume_case
    given = damage(write_checkpoint(module, tmp_path / "given.ckpt", step=3))
    last = damage(write_checkpoint(module, checkpoints / "last.ckpt", step=10))
    with pytest.raises(UserInputError, match="no checkpoint to resume from loads") as refused:
        resume_checkpoint(make_cfg(f"ckpt_path={given}"), module)
    assert str(given) in str(refused.value) and "last.ckpt.damaged" in str(refused.value)
    assert given.is_file() and not last.exists()
    # the requeued job does not meet the damaged file again: with nothing left it starts afresh
    assert resume_checkpoint(make_cfg(), module) == (None, None)


def test_a_file_of_another_network_is_skipped_like_a_damaged_one(resume_case, make_train_cfg, tmp_path):
    from lnrepro.tasks.train import build_module
    from lnrepro.training.resume import resume_checkpoint

    make_cfg, module, checkpoints = resume_case
    other = build_module(make_train_cfg("model.width=0.5", "data.image_size=16", output_dir=tmp_path / "other"))
    write_checkpoint(other, checkpoints / "last.ckpt", step=10)
    good = write_checkpoint(module, checkpoints / "epoch_000.ckpt", step=4)
    assert resume_checkpoint(make_cfg(), module)[1] == str(good)


def test_a_requeued_job_with_a_truncated_last_ckpt_resumes_from_its_epoch_checkpoint(tmp_path):
    run_dir = tmp_path / "job"
    first = start("train.py", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}", log_dir=tmp_path / "first")
    assert finish(first, tmp_path / "first")[0] == 0
    damage(run_dir / "checkpoints" / "last.ckpt")  # a copy cut short, a disk fault

    again = start("train.py", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", log_dir=tmp_path / "again")
    status, stderr = finish(again, tmp_path / "again")
    assert status == 0, stderr[-3000:]
    metrics = metrics_in(run_dir)
    assert metrics["resumed_from"] == str(run_dir / "checkpoints" / "epoch_000.ckpt")
    assert metrics["global_step"] == 8 and (run_dir / "checkpoints" / "last.ckpt.damaged").is_file()


def test_a_kill_after_an_epoch_s_last_step_resumes_with_that_epoch_s_validation(make_train_cfg, tmp_path):
    """every_n_train_steps dividing the steps of an epoch: Lightning resumes from a checkpoint of an epoch's last
    step without that epoch's validation (and its best checkpoint); last.ckpt is written at the epoch's end
    instead, after validation, and the resumed run matches the uninterrupted one."""
    from lnrepro.tasks import train
    from tests.test_reliability import metrics_of_dir

    common = ["model.width=0.25", "data.image_size=16", "trainer.max_epochs=2", *RANDOM]
    common += ["callbacks.last_checkpoint.every_n_train_steps=2"]  # 4 steps an epoch
    train(make_train_cfg(*common, output_dir=tmp_path / "full"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        crash = ["+callbacks.crash._target_=tests.test_reliability.CrashAtStep", "+callbacks.crash.step=5"]
        train(make_train_cfg(*common, *crash, output_dir=tmp_path / "crashed"))
    last = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4
    train(make_train_cfg(*common, f"ckpt_path={last}", output_dir=tmp_path / "resumed"))
    assert_same_run(metrics_of_dir(tmp_path / "full"), metrics_of_dir(tmp_path / "resumed"))


# --------------------------------------------------------------------------------------------------------------------
# Strings a resume reads back
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stored", ["../../x", "a" * 300, {"entity": "x"}, "has space", ""])
def test_a_stored_wandb_run_id_that_is_not_one_is_replaced(stored, caplog):
    from lnrepro.callbacks import WandbRunId

    assert WandbRunId.run_id_in({"callbacks": {"WandbRunId": {"run_id": stored}}}) is None
    assert stored == "" or "not one" in caplog.text
    assert WandbRunId.run_id_in({"callbacks": {"WandbRunId": {"run_id": "ab12_cd-3"}}}) == "ab12_cd-3"
    assert WandbRunId.run_id_in({"callbacks": "junk"}) is None


def test_a_run_resumed_from_a_checkpoint_with_a_crafted_wandb_id_logs_to_a_new_run(make_train_cfg, tmp_path):
    from lnrepro.tasks import train

    small = ["logger=wandb", "model.width=0.25", "data.image_size=16"]
    train(make_train_cfg(*small, output_dir=tmp_path / "first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["callbacks"]["WandbRunId"]["run_id"] = "../../" + "x" * 300
    torch.save(checkpoint, last)
    metrics = train(make_train_cfg(*small, "trainer.max_epochs=2", f"ckpt_path={last}", output_dir=tmp_path / "b"))
    assert metrics["global_step"] == 8
    (offline,) = (tmp_path / "b" / "wandb").glob("offline-run-*")
    assert "x" * 20 not in offline.name


def test_stored_checkpoint_paths_that_are_not_checkpoint_paths_are_dropped():
    from lnrepro.training.checkpoint_io import checked_paths

    state = {
        "best_model_path": {"not": "a path"},
        "best_model_score": torch.tensor(0.9),
        "last_model_path": "/etc/passwd",
        "kth_best_model_path": "runs/epoch_001.ckpt",
        "dirpath": "runs",
        "best_k_models": {"/etc/shadow": 0.5},
    }
    checked = checked_paths(state)
    assert "best_model_path" not in checked and "best_model_score" not in checked
    assert "last_model_path" not in checked and "best_k_models" not in checked
    assert checked["kth_best_model_path"] == "runs/epoch_001.ckpt" and checked["dirpath"] == "runs"


# --------------------------------------------------------------------------------------------------------------------
# The chaos drill
# --------------------------------------------------------------------------------------------------------------------

# Where a kill lands, each found by watching what the run writes: the moment the first mid-epoch last.ckpt exists
# (then a seeded pause: between steps), while a checkpoint's temporary file exists (during its write), once
# testing has begun, once the end-of-fit profile has begun.
KILL_POINTS = ("between_steps", "checkpoint_write", "testing", "profile")
KILL_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
CHAOS_SEED = 18
CHAOS = [
    "trainer.max_epochs=2",
    "callbacks.last_checkpoint.every_n_train_steps=2",
    "data.test_size=256",
    "profile.end_of_fit=true",
    "profile.runtimes=[eager]",
    "profile.runs=200",
    "profile.warmup=0",
    "profile.batch_size=2",
    *RANDOM,
]


def _kill_at(process: subprocess.Popen, log_dir: Path, point: str, rng: random.Random) -> None:
    if point == "between_steps":
        wait_for(process, log_dir, "train/runs/*/checkpoints/last.ckpt")
        time.sleep(rng.uniform(0.0, 1.0))
    elif point == "checkpoint_write":  # one that replaces a last.ckpt: a kill in the first write leaves nothing
        wait_for(process, log_dir, "train/runs/*/checkpoints/last.ckpt")
        wait_for(process, log_dir, "train/runs/*/checkpoints/.*.tmp", poll_s=0.0)  # a write lasts milliseconds
    elif point == "testing":
        wait_for(process, log_dir, "train/runs/*/train.log", "Restoring states from the checkpoint")
        time.sleep(rng.uniform(0.0, 0.2))
    else:
        wait_for(process, log_dir, "train/runs/*/train.log", "metrics written to")  # the profile starts
        time.sleep(rng.uniform(0.0, 0.3))


@pytest.mark.slow
def test_chaos_drill_runs_killed_at_random_points_resume_to_the_uninterrupted_numbers(tmp_path):
    """Every signal at every kill point, in an order and with pauses drawn from a seeded generator; each killed
    run is resumed with the same command plus ckpt_path=<run>/checkpoints/last.ckpt and must end with the
    uninterrupted run's global_step, test/acc and test/loss, no temporary file left, and a complete metrics.json."""
    rng = random.Random(CHAOS_SEED)
    full = start("train.py", *CHAOS, *SLOW_STEPS, log_dir=tmp_path / "full")
    assert finish(full, tmp_path / "full")[0] == 0
    expected = metrics_in(run_dir_of(tmp_path / "full"))
    points = [(point, sent) for point in KILL_POINTS for sent in KILL_SIGNALS]
    rng.shuffle(points)
    for number, (point, sent) in enumerate(points):
        log_dir = tmp_path / f"{number}_{point}_{sent.name}"
        process = start("train.py", *CHAOS, *SLOW_STEPS, log_dir=log_dir)
        _kill_at(process, log_dir, point, rng)
        process.send_signal(sent)
        status, stderr = finish(process, log_dir)
        assert status in (-signal.SIGKILL, 128 + sent), (point, sent, status, stderr[-2000:])
        if sent != signal.SIGKILL:
            assert "Traceback" not in stderr and status == 128 + sent, (point, stderr[-2000:])
        run = run_dir_of(log_dir)
        last = run / "checkpoints" / "last.ckpt"
        assert last.is_file(), (point, sent)
        torch.load(last, weights_only=True)  # whole, whatever the kill interrupted
        if (run / "metrics.json").exists():
            metrics_in(run)  # whole too

        resumed_dir = log_dir / "resumed"
        resumed = start("train.py", *CHAOS, f"ckpt_path={last}", log_dir=resumed_dir)
        status, stderr = finish(resumed, resumed_dir)
        assert status == 0, (point, sent, stderr[-3000:])
        got = metrics_in(run_dir_of(resumed_dir))
        for key in ("global_step", "test/acc", "test/loss"):
            assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-5), (point, sent, key)
        assert "latency/eager_ms" in got, (point, sent)  # complete: the profile ran after the resume
        if point in ("testing", "profile"):  # training had finished: the resume trains no more steps
            assert "train/epoch_s" not in got or got.get("epochs") == expected["epochs"]
        leftovers = [p for p in log_dir.rglob("*") if ".tmp" in p.name]
        assert not leftovers or all(p.parent.name == "checkpoints" for p in leftovers), leftovers
