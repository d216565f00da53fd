"""Sweeps (`-m`) whose jobs fail or that are stopped, with real processes and real signals: every failed job is named
in one line and the others still run; SIGTERM and SIGINT stop a sweep (in the sweep's process: the job that runs,
then no other; with `hydra/launcher=local`: passed on to the jobs' own processes, once each).

Most jobs are tests/sweep_app.py's stand-in task (the train config, a task that fails, exits or waits for a signal
as told, a second or two per job); one sweep is a real `train.py -m`. The SLURM launcher's own cases are in
test_cluster.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import CONF, ROOT

APP = ROOT / "tests" / "sweep_app.py"
TRAIN = ROOT / "train.py"
# A tiny real run: with train=false a possible job tests its untrained network on 16 images, so the sweep's cost is
# the processes' start; width -1 and 0 are refused as the network is built, before any data is made.
TINY_TRAIN = [
    "data=synthetic",
    "data.train_size=16",
    "data.val_size=16",
    "data.test_size=16",
    "data.batch_size=16",
    "data.image_size=16",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.enable_progress_bar=false",
    "~callbacks.rich_progress_bar",
    "trainer.enable_model_summary=false",
    "print_config=false",
    "profile.end_of_fit=false",
    "train=false",
]
WAIT_S = 120  # for a job to start, or a stopped sweep to end, on a loaded 2-core machine


def environment() -> dict[str, str]:
    return {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def sweep_command(script: Path, log_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(script), "-m", f"paths.log_dir={log_dir}", *overrides]


def run_sweep(script: Path, log_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        sweep_command(script, log_dir, *overrides),
        capture_output=True,
        text=True,
        env=environment(),
        cwd=ROOT,
        timeout=600,
    )


def sweep_dir(log_dir: Path) -> Path:
    (found,) = log_dir.glob("train/multiruns/*")
    return found


def job_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("job #")]


def start_sweep(log_dir: Path, *overrides: str, new_session: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        sweep_command(APP, log_dir, *overrides),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
        cwd=ROOT,
        start_new_session=new_session,  # a process group of its own: what a terminal's Ctrl+C reaches
    )


def wait_until_started(process: subprocess.Popen, log_dir: Path, jobs: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(list(log_dir.glob("train/multiruns/*/*/started"))) < jobs:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            stdout, stderr = process.communicate()
            pytest.fail(f"the jobs did not start (status {process.returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}")
        time.sleep(0.1)


def finish(process: subprocess.Popen) -> tuple[str, str]:
    try:
        return process.communicate(timeout=WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()


# --- failed jobs ----------------------------------------------------------------------------------------------------
def test_a_sweep_with_impossible_jobs_runs_the_others_names_each_in_one_line_and_exits_2(tmp_path):
    result = run_sweep(TRAIN, tmp_path, *TINY_TRAIN, "model.width=-1,0.25,0")
    assert result.returncode == 2, result.stderr[-3000:]
    runs = sweep_dir(tmp_path)
    assert (runs / "1" / "metrics.json").is_file()  # the possible job ran to its end, after a failed one
    assert "2 of 3 jobs of the sweep failed; the others ran to their end" in result.stderr
    lines = job_lines(result.stderr)
    assert len(lines) == 2, result.stderr[-3000:]
    for line, number, width in zip(lines, (0, 2), (-1, 0)):
        assert line == (
            f"job #{number} (model.width={width}) failed: UserInputError: width must be > 0 (got {width}); "
            f"log: {runs / str(number) / 'train.log'}"
        )
        assert f"width must be > 0 (got {width})" in (runs / str(number) / "train.log").read_text()
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr
    assert "HYDRA_FULL_ERROR" not in result.stderr  # no traceback to ask for


def test_a_job_that_fails_with_a_traceback_is_named_too_its_log_holds_the_traceback_and_the_sweep_exits_1(tmp_path):
    result = run_sweep(APP, tmp_path, "+does=refused,bug,ok")
    assert result.returncode == 1, result.stderr[-3000:]  # not 2: one failure is not a refused value
    runs = sweep_dir(tmp_path)
    assert (runs / "2" / "done").is_file()
    assert job_lines(result.stderr) == [
        f"job #0 (+does=refused) failed: UserInputError: does=refused is refused: use does=ok; "
        f"log: {runs / '0' / 'train.log'}",
        f"job #1 (+does=bug) failed: ZeroDivisionError: division by zero; log: {runs / '1' / 'train.log'}",
    ]
    assert "Traceback" not in result.stderr
    log = (runs / "1" / "train.log").read_text()
    assert "Traceback (most recent call last)" in log and "print(1 / 0)" in log
    assert "Traceback" not in (runs / "0" / "train.log").read_text()  # a refused value stays one line


def test_a_local_sweep_names_each_failed_job_with_its_logs_which_hold_a_bugs_traceback(tmp_path):
    result = run_sweep(APP, tmp_path, "hydra/launcher=local", "+does=refused,bug,ok")
    assert result.returncode == 1, result.stderr[-3000:]
    runs = sweep_dir(tmp_path)
    assert (runs / "2" / "done").is_file()
    assert job_lines(result.stderr) == [
        "job #0 (+does=refused) failed: UserInputError: does=refused is refused: use does=ok",
        "job #1 (+does=bug) failed: ZeroDivisionError: division by zero",
    ]
    logs = re.findall(r"^    log: (\S+)\n\s+(\S+)$", result.stderr, re.MULTILINE)  # each job's .err and .out
    assert len(logs) == 2 and all(Path(f).parent.parent == runs / ".submitit" for pair in logs for f in pair)
    assert "ZeroDivisionError: division by zero" in Path(logs[1][1]).read_text()  # the traceback, in its .out
    assert "Traceback" in (runs / "1" / "train.log").read_text() and "Traceback" not in result.stderr


# --- stopped sweeps: in the sweep's process -------------------------------------------------------------------------
def test_a_job_that_exits_143_stops_the_sweep_at_once_with_its_status(tmp_path):
    """What a task stopped by SIGTERM does (`lnrepro.tasks.common.run_task` exits 143): the sweep starts no other
    job, names the failure before it and the stopped job, and exits 143."""
    result = run_sweep(APP, tmp_path, "+does=refused,exit143,ok,ok")
    assert result.returncode == 143, result.stderr[-3000:]
    runs = sweep_dir(tmp_path)
    assert not (runs / "2").exists() and not (runs / "3").exists()
    assert len(job_lines(result.stderr)) == 1 and "job #0 (+does=refused) failed" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "sweep stopped: job #1 (+does=exit143) was stopped by SIGTERM (exit status 143); "
        "the remaining 2 jobs (#2, #3) were not started"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT], ids=lambda n: signal.Signals(n).name)
@pytest.mark.parametrize("does", ["wait", "wait_unhandled"])
def test_a_signal_to_a_sweep_stops_the_job_that_runs_and_starts_no_other(tmp_path, number, does):
    """`wait`: the job handles the signal as lnrepro's tasks do (saves, exits 128 + n); `wait_unhandled`: a job
    that does not (or a signal between jobs): the sweep's own handler stops it."""
    process = start_sweep(tmp_path, f"+does={does},ok,ok")
    wait_until_started(process, tmp_path, jobs=1)
    process.send_signal(number)
    _, stderr = finish(process)
    assert process.returncode == 128 + number, stderr[-3000:]
    runs = sweep_dir(tmp_path)
    name = signal.Signals(number).name
    if does == "wait":
        assert (runs / "0" / "signals").read_text() == f"{name}\n" and (runs / "0" / "saved").is_file()
    assert not (runs / "0" / "done").exists() and not (runs / "1").exists()
    assert stderr.strip().splitlines()[-1] == (
        f"sweep stopped: job #0 (+does={does}) was stopped by {name} (exit status {128 + number}); "
        "the remaining 2 jobs (#1, #2) were not started"
    )
    assert "Traceback" not in stderr


# --- stopped sweeps: hydra/launcher=local ---------------------------------------------------------------------------
def test_sigterm_to_a_local_sweep_is_passed_on_to_its_jobs_which_stop_then_it_exits_143(tmp_path):
    process = start_sweep(tmp_path, "hydra/launcher=local", "+does=wait", "seed=1,2")
    wait_until_started(process, tmp_path, jobs=2)
    process.send_signal(signal.SIGTERM)  # to the sweep's process alone
    _, stderr = finish(process)
    assert process.returncode == 143, stderr[-3000:]
    runs = sweep_dir(tmp_path)
    for job in ("0", "1"):
        assert (runs / job / "signals").read_text() == "SIGTERM\n"  # passed on, once
        assert (runs / job / "saved").is_file() and not (runs / job / "done").exists()
    assert stderr.strip().splitlines()[-1] == (
        "sweep stopped by SIGTERM: passed it on to 2 running jobs and waited for them to end: #0 (seed=1), "
        f"#1 (seed=2) (logs in {runs / '.submitit'})"
    )
    assert "Traceback" not in stderr


def test_ctrl_c_on_a_local_sweep_reaches_each_job_once_and_it_exits_130(tmp_path):
    """Ctrl+C in a terminal sends SIGINT to the whole foreground process group. The jobs' controllers run in a
    session of their own (submitit's would answer SIGINT by killing its job a second later): each job gets the
    sweep's SIGINT, once, and has the time to save."""
    process = start_sweep(tmp_path, "hydra/launcher=local", "+does=wait", "seed=1,2", new_session=True)
    wait_until_started(process, tmp_path, jobs=2)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = finish(process)
    assert process.returncode == 130, stderr[-3000:]
    runs = sweep_dir(tmp_path)
    for job in ("0", "1"):
        assert (runs / job / "signals").read_text() == "SIGINT\n"
        assert (runs / job / "saved").is_file()
    assert re.search(r"^sweep stopped by SIGINT: passed it on to 2 running jobs", stderr, re.MULTILINE), stderr
    assert "Traceback" not in stderr


# --- pieces ---------------------------------------------------------------------------------------------------------
def test_lnrepros_user_facing_errors_are_recognised_without_importing_lnrepro():
    from hydra_plugins.lnrepro_launchers import launchers
    from lnrepro import errors

    assert launchers.USER_ERROR_STATUS == errors.USER_ERROR_STATUS
    for kind in errors.USER_FACING_ERRORS:
        assert launchers.is_user_facing(kind("x"))
    assert not launchers.is_user_facing(RuntimeError("x")) and not launchers.is_user_facing(ValueError("x"))
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, hydra_plugins.lnrepro_launchers.launchers; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert not re.search(r"'(torch|lightning|lnrepro)[.']", loaded)  # the sweep's process stays light


def _launcher_target(config: str, *overrides: str) -> str:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name=config, overrides=list(overrides), return_hydra_config=True)
        return cfg.hydra.launcher._target_
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("config", ["train", "eval", "profile"])
def test_every_entry_point_sweeps_with_the_sequential_launcher_and_hydras_own_stays_available(config):
    assert _launcher_target(config) == "hydra_plugins.lnrepro_launchers.launchers.SequentialLauncher"
    assert _launcher_target(config, "hydra/launcher=basic") == (
        "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    )
