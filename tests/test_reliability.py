"""What a run survives: a kill at any moment, a full disk, a batch too big for memory (issue 10, items 3, 4, 7).

Checkpoints are written atomically (lnrepro/training/checkpoint_io.py), a full disk or an exhausted allocator ends
the run with one line (lnrepro/tasks/common.py), and a run killed mid-epoch resumes to the same numbers as one that
never stopped (lnrepro/data/loading.py ResumableDataLoader, lnrepro/callbacks/epoch_seeding.py).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf

from lnrepro.tasks import train
from lnrepro.tasks.common import run_task
from lnrepro.tasks.instantiate import instantiate
from lnrepro.training.checkpoint_io import AtomicCheckpointIO
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


def no_space(*filename: str) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *filename)


# What train.py runs in the subprocess drills: 4 steps of 16 synthetic images per epoch, one thread.
TINY = [
    "data=synthetic",
    "data.train_size=64",
    "data.val_size=32",
    "data.test_size=32",
    "data.batch_size=16",
    "model=shufflenet_v2",
    "model.width=0.5",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "~callbacks.rich_progress_bar",
    "print_config=false",
    "profile.end_of_fit=false",
]
# Every source of randomness a resumed run must replay: shuffle, crop, flip, cutout, dropout.
RANDOM = ["model.dropout=0.2", "data.crop_padding=2", "data.flip=true", "data.cutout=4"]
# The figures a resumed run must reproduce. Not train/*_epoch: Lightning does not checkpoint the running means
# of the epoch it resumes in, so those average only the batches after the resume.
SAME = ("val/acc", "val/acc5", "val/loss", "val/acc_best", "test/acc", "test/loss", "global_step", "epochs")


def run_train(*overrides: str, log_dir: Path, prefix: str = "", wait: bool = True):
    """train.py as a user runs it (see test_cli.run_script), with one compute thread and `prefix` (a shell
    command, e.g. `ulimit -v N;`) before it."""
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HYDRA_FULL_ERROR": "0",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={log_dir}", *TINY, *overrides]
    if prefix:
        command = ["bash", "-c", prefix + ' exec "$@"', "bash", *command]
    if not wait:  # stderr to a file: a pipe nobody reads would stall the run once full
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "stderr.txt", "w") as stderr:
            return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=ROOT)
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def metrics_of(log_dir: Path) -> dict:
    (path,) = log_dir.glob("train/runs/*/metrics.json")
    return json.loads(path.read_text())


def assert_same_run(expected: dict, got: dict) -> None:
    for key in SAME:
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-5), key


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "Logging error" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@contextlib.contextmanager
def tmpfs(directory: Path, size_kib: int):
    """A RAM filesystem of `size_kib` mounted on `directory` (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(directory)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path) -> None:
    """Write zeros into `directory` until its filesystem is full."""
    with contextlib.suppress(OSError), open(directory / "filler", "wb") as file:
        while True:
            file.write(bytes(64 * 1024))
            file.flush()


def exit_of(task, cfg, capsys) -> tuple[int, str]:
    """run_task's exit status and stderr."""
    with pytest.raises(SystemExit) as exited:
        run_task(task, cfg)
    return exited.value.code, capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# Atomic checkpoints
# --------------------------------------------------------------------------------------------------------------------


class FillsUpAfter(io.FileIO):
    """A file on a disk with `budget` bytes left: writes beyond it fail with ENOSPC, as on a full disk."""

    budget = 0

    def write(self, data) -> int:
        if FillsUpAfter.budget <= 0:
            raise no_space()
        data = bytes(data)[: FillsUpAfter.budget]
        FillsUpAfter.budget -= len(data)
        return super().write(data)


def test_a_checkpoint_write_that_fills_the_disk_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    checkpoint_io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    previous = {"state_dict": {"weight": torch.arange(10.0)}, "epoch": 0, "global_step": 4}
    checkpoint_io.save_checkpoint(previous, target)
    written = target.read_bytes()

    real_fdopen = os.fdopen
    monkeypatch.setattr(
        os,
        "fdopen",
        lambda fd, mode="r", *args, **kwargs: (
            io.BufferedWriter(FillsUpAfter(fd, "wb")) if "w" in mode else real_fdopen(fd, mode, *args, **kwargs)
        ),
    )
    FillsUpAfter.budget = 100_000  # the disk fills halfway through the new checkpoint
    bigger = {"state_dict": {"weight": torch.randn(100_000)}, "epoch": 1, "global_step": 8}
    with pytest.raises(OSError) as error:
        checkpoint_io.save_checkpoint(bigger, target)
    monkeypatch.undo()

    # torch.save wraps the failed write in its own RuntimeError: the error is the OSError, naming the checkpoint.
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(target)
    assert target.read_bytes() == written
    assert torch.load(target, weights_only=True)["global_step"] == 4
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


WRITER = """
import sys, torch
from lnrepro.training.checkpoint_io import AtomicCheckpointIO
checkpoint_io = AtomicCheckpointIO()
for step in range(1, 1000):
    checkpoint = {"global_step": step, "weights": torch.full((16_000_000,), float(step))}
    print("writing", step, flush=True)
    checkpoint_io.save_checkpoint(checkpoint, sys.argv[1])
"""


def test_kill_9_in_the_middle_of_a_checkpoint_write_leaves_the_previous_one(tmp_path):
    target = tmp_path / "last.ckpt"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        while writer.stdout.readline().split() != ["writing", "3"]:  # 64 MB each: two written, the third begun
            assert writer.poll() is None
        time.sleep(0.05)  # mid-write on this machine: the temporary file held 4-36 MB of the 64 at 0.03-0.1 s
        writer.send_signal(signal.SIGKILL)
        assert writer.wait() == -signal.SIGKILL
    finally:
        writer.kill()
        writer.stdout.close()
    state = torch.load(target, weights_only=True)
    assert state["global_step"] in (2, 3) and bool((state["weights"] == state["global_step"]).all())
    # What a kill cannot clean up: at most the hidden temporary file of the write it interrupted.
    assert {p.name for p in tmp_path.iterdir()} - {"last.ckpt"} <= {p.name for p in tmp_path.glob(".last.ckpt.*.tmp")}


@pytest.mark.parametrize("trainer", ["default", "cpu", "ddp"])
def test_every_trainer_config_writes_checkpoints_atomically(make_train_cfg, trainer, tmp_path):
    cfg = make_train_cfg(f"trainer={trainer}", "trainer.accelerator=cpu")
    made: pl.Trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(made.strategy.checkpoint_io, AtomicCheckpointIO)
    # A plain read, as eval.py does it; files get the mode open() would give them (mkstemp's is 0600).
    made.strategy.checkpoint_io.save_checkpoint({"global_step": 3}, tmp_path / "a.ckpt")
    assert torch.load(tmp_path / "a.ckpt", weights_only=True) == {"global_step": 3}
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.ckpt").stat().st_mode & 0o777 == 0o666 & ~umask


# --------------------------------------------------------------------------------------------------------------------
# A full disk: one line naming the file
# --------------------------------------------------------------------------------------------------------------------


def _checkpoint_write_then_cleanup_writes(path: Path):
    """How a failed checkpoint reaches run_task: torch.save's RuntimeError, re-raised by the writer as an OSError
    naming the file; then, while Lightning cleans up, the CSV logger's flush fails too."""
    try:
        try:
            try:
                raise no_space()
            except OSError:
                # raised while handling, as torch's writer does: the chain through __context__ is what is tested
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904
        except RuntimeError as wrapped:
            raise no_space(str(path)) from wrapped
    except OSError:
        with open(path.parent / "metrics.csv", "w"):
            raise no_space()  # noqa: B904  a second failure while handling the first, as Lightning's cleanup raises it


def _unnamed_write(path: Path):
    """A write, flush or close that fails carries no file name (the CSV logger's metrics.csv)."""
    with open(path, "w") as file:
        file.write("step,train/loss\n")
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))


@pytest.mark.parametrize(
    "fail, named, cause",
    [
        (_checkpoint_write_then_cleanup_writes, "last.ckpt", "no space left on device"),
        (_unnamed_write, "metrics.csv", "disk quota exceeded"),
    ],
)
def test_a_full_disk_is_one_line_naming_the_first_file_that_failed(tmp_path, capsys, fail, named, cause):
    path = tmp_path / named
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}})
    status, stderr = exit_of(lambda cfg: fail(path), cfg, capsys)
    assert status == 2
    assert error_lines(stderr) == [f"error: {cause} writing {path}: free space or move paths.log_dir"]


def test_a_full_log_file_stops_the_task_with_one_line_not_logging_tracebacks(tmp_path, capsys):
    class FullDisk(io.StringIO):
        def flush(self):
            raise no_space()

    handler = logging.FileHandler(tmp_path / "train.log", delay=True)
    handler.stream = FullDisk()
    root = logging.getLogger()
    root.addHandler(handler)
    ran_on = []

    def task(cfg):
        logging.getLogger("lnrepro").warning("a line the log file cannot take")
        ran_on.append("after the log line")

    try:
        status, stderr = exit_of(task, OmegaConf.create({}), capsys)
    finally:
        root.removeHandler(handler)
        handler.stream = io.StringIO()
        handler.close()
    assert status == 2 and not ran_on
    path = tmp_path / "train.log"
    assert error_lines(stderr) == [f"error: no space left on device writing {path}: free space or move paths.log_dir"]


def test_a_full_tmpfs_under_the_csv_logger_and_the_log_file_is_one_line(tmp_path, capsys):
    """The same two writes on a real full filesystem: Lightning's CSV logger, then a log file."""
    from lightning.pytorch.loggers import CSVLogger

    with tmpfs(tmp_path / "disk", 64) as disk:
        logger = CSVLogger(disk, name="csv", version="")
        logger.log_hyperparams({})
        fill(disk)
        logger.log_metrics({"train/loss": 1.0}, step=0)
        status, stderr = exit_of(lambda cfg: logger.save(), OmegaConf.create({}), capsys)
        assert status == 2
        assert error_lines(stderr) == [
            f"error: no space left on device writing {disk / 'csv' / 'metrics.csv'}: free space or move paths.log_dir"
        ]

        (disk / "filler").unlink()
        handler = logging.FileHandler(disk / "train.log")
        logging.getLogger().addHandler(handler)
        try:
            fill(disk)
            status, stderr = exit_of(
                lambda cfg: logging.getLogger("lnrepro").warning("x" * 10_000), OmegaConf.create({}), capsys
            )
        finally:
            logging.getLogger().removeHandler(handler)
            (disk / "filler").unlink()
            handler.close()
        assert status == 2
        assert error_lines(stderr) == [
            f"error: no space left on device writing {disk / 'train.log'}: free space or move paths.log_dir"
        ]


def test_a_bug_keeps_its_traceback():
    def task(cfg):
        raise ValueError("a bug, not the user's doing")

    with pytest.raises(ValueError, match="a bug"):
        run_task(task, OmegaConf.create({}))


def checkpoint_size(make_train_cfg, *overrides: str) -> int:
    """About the bytes of one checkpoint of this config: the weights and buffers, plus SGD's momentum."""
    from lnrepro.tasks.train import build_module

    module = build_module(make_train_cfg(*overrides))
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell() + sum(p.numel() * p.element_size() for p in module.parameters()) + 64 * 1024


def test_a_disk_that_fills_during_training_ends_with_one_line_and_keeps_the_last_checkpoint(make_train_cfg, tmp_path):
    size = checkpoint_size(make_train_cfg, "model=shufflenet_v2", "model.width=0.5")
    # Epoch 0 writes two checkpoints (best and last.ckpt); epoch 1 needs room for a third, the new file being
    # written next to the one it replaces. 2.5 of them fit.
    with tmpfs(tmp_path / "disk", int(2.5 * size / 1024)) as disk:
        started = time.monotonic()
        result = run_train("trainer.max_epochs=3", log_dir=disk)
        seconds = time.monotonic() - started
        assert result.returncode == 2, result.stderr[-3000:]
        (line,) = error_lines(result.stderr)
        match = re.fullmatch(
            r"error: no space left on device writing (\S+): free space or move paths\.log_dir; "
            r"resume from the last good checkpoint: ckpt_path=(\S+)",
            line,
        )
        assert match, line
        (run_dir,) = disk.glob("train/runs/*")
        failed, last = Path(match[1]), Path(match[2])
        assert failed.parent == last.parent == run_dir / "checkpoints" and failed.suffix == ".ckpt"
        assert not list(disk.rglob("*.tmp"))
        state = torch.load(last, weights_only=True)
        assert (state["epoch"], state["global_step"]) == (0, 4), seconds
        kept = shutil.copy(last, tmp_path / "last.ckpt")

    # The kept checkpoint resumes, elsewhere, to the end.
    resumed = train(
        make_train_cfg("model=shufflenet_v2", "model.width=0.5", "trainer.max_epochs=2", f"ckpt_path={kept}")
    )
    assert (resumed["epochs"], resumed["global_step"]) == (2, 8)


# --------------------------------------------------------------------------------------------------------------------
# A batch too big for memory
# --------------------------------------------------------------------------------------------------------------------


def test_out_of_memory_is_one_line_naming_the_batch_size(tmp_path, capsys):
    cfg = OmegaConf.create({"data": {"batch_size": 8192}, "paths": {"output_dir": str(tmp_path)}})
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"kept")
    cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 805306368 bytes. Error code 12 (Cannot allocate memory)"
    )
    cuda = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of "
        "79.11 GiB of which 3.06 MiB is free.\nOf the allocated memory ..."
    )
    for error, size in ((cpu, "768.0 MiB"), (cuda, "20.00 MiB")):

        def task(cfg, error=error):
            raise error

        status, stderr = exit_of(task, cfg, capsys)
        assert status == 2
        assert error_lines(stderr) == [
            f"error: out of memory at data.batch_size=8192 (tried to allocate {size}): try a smaller one, e.g. "
            f"data.batch_size=4096; resume from the last good checkpoint: ckpt_path={tmp_path}/checkpoints/last.ckpt"
        ]


def virtual_memory_after_imports() -> int:
    """KiB of address space python takes once torch, Lightning and lnrepro are imported."""
    probe = (
        "import torch, lightning, hydra, lnrepro.tasks\n"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmPeak')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.strip())


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmPeak from /proc")
def test_a_batch_too_big_for_memory_ends_with_one_line(tmp_path):
    # 1.5 GiB more than the imports: enough to build and validate, not for one layer's output on 16384 images
    # (1.6 GB for the stem alone).
    limit = virtual_memory_after_imports() + 1536 * 1024
    result = run_train(
        "data.train_size=16384",
        "data.batch_size=16384",
        "data.val_size=32",
        "trainer.max_epochs=1",
        log_dir=tmp_path,
        prefix=f"ulimit -v {limit};",
    )
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert line.startswith("error: out of memory at data.batch_size=16384") and "data.batch_size=8192" in line


# --------------------------------------------------------------------------------------------------------------------
# Killed at any moment, resumed from last.ckpt
# --------------------------------------------------------------------------------------------------------------------


class CrashAtStep(pl.Callback):
    """Raise as the batch after optimizer step `step` starts: a kill mid-epoch, after last.ckpt was written."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


def test_a_run_resumed_mid_epoch_matches_an_uninterrupted_one(make_train_cfg, tmp_path):
    # 8 steps per epoch, last.ckpt every 3 steps: the crash at step 11 leaves last.ckpt of step 9, in epoch 1.
    common = [
        "model=shufflenet_v2",
        "model.width=0.5",
        "data.train_size=128",
        "trainer.max_epochs=2",
        "callbacks.last_checkpoint.every_n_train_steps=3",
        *RANDOM,
    ]
    full = train(make_train_cfg(*common, output_dir=tmp_path / "full"))

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(
            make_train_cfg(
                *common,
                "+callbacks.crash._target_=tests.test_reliability.CrashAtStep",
                "+callbacks.crash.step=11",
                output_dir=tmp_path / "crashed",
            )
        )
    last = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert (state["epoch"], state["global_step"]) == (1, 9)

    resumed = train(make_train_cfg(*common, f"ckpt_path={last}", output_dir=tmp_path / "resumed"))
    assert_same_run(metrics_of_dir(tmp_path / "full"), metrics_of_dir(tmp_path / "resumed"))
    assert resumed["global_step"] == full["global_step"] == 16


def metrics_of_dir(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_kill_9_at_any_moment_then_resume_matches_an_uninterrupted_run(tmp_path):
    # 16 steps per epoch, last.ckpt every 5: a kill lands mid-epoch, mid-write or between writes.
    common = ["data.train_size=256", "trainer.max_epochs=2", "callbacks.last_checkpoint.every_n_train_steps=5", *RANDOM]
    started = time.monotonic()
    full = run_train(*common, log_dir=tmp_path / "full", wait=False)  # alongside the one to kill: 2 cores
    killed = run_train(*common, log_dir=tmp_path / "killed", wait=False)
    try:
        while not list((tmp_path / "killed").glob("train/runs/*/checkpoints/last.ckpt")):
            assert killed.poll() is None, (tmp_path / "killed" / "stderr.txt").read_text()[-3000:]
            time.sleep(0.01)
        time.sleep(random.uniform(0.0, 0.3))  # any moment after the first last.ckpt
        assert killed.poll() is None, "the run finished before the kill"
        killed.send_signal(signal.SIGKILL)
        assert killed.wait() == -signal.SIGKILL
    finally:
        killed.kill()
    killed_after = time.monotonic() - started
    (checkpoints,) = (tmp_path / "killed").glob("train/runs/*/checkpoints")
    last = checkpoints / "last.ckpt"  # whole even if the kill hit a write (that leaves a hidden .tmp beside it)
    state = torch.load(last, weights_only=True)
    assert state["global_step"] % 5 == 0 and state["global_step"] < 32

    resumed = run_train(*common, f"ckpt_path={last}", log_dir=tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert full.wait(timeout=600) == 0, (tmp_path / "full" / "stderr.txt").read_text()[-3000:]
    expected, got = metrics_of(tmp_path / "full"), metrics_of(tmp_path / "resumed")
    assert_same_run(expected, got)
    assert got["global_step"] == 32, (state["global_step"], killed_after)
