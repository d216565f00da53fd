"""Scale-out pieces that need no cluster and no extra processes: the global batch, ranks, SLURM facts, automatic
resume, the launcher presets, the DDP split of the epoch order. The real-process tests are in test_cluster.py."""

from __future__ import annotations

import json
import logging
import re

import lightning
import lightning.pytorch as pl
import pytest
import tomllib
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from packaging.version import Version

from lnrepro import schema
from lnrepro.data.loading import EpochShuffleSampler
from lnrepro.errors import UserInputError
from lnrepro.training import distributed
from tests.conftest import CONF, ROOT, compose_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_launcher_env(monkeypatch):
    for name in (
        *distributed.RANK_VARIABLES,
        "SLURM_JOB_ID",
        "SLURM_ARRAY_JOB_ID",
        "SLURM_ARRAY_TASK_ID",
        "SLURM_RESTART_COUNT",
        "LNREPRO_TASKS_PER_NODE",
        "LNREPRO_NUM_NODES",
    ):
        monkeypatch.delenv(name, raising=False)


# --- the global batch ---------------------------------------------------------------------------------------------
def test_the_global_batch_is_split_evenly():
    assert distributed.per_process_batch(1024, 8) == 128
    assert distributed.per_process_batch(16, 1) == 16


def test_a_global_batch_that_does_not_divide_is_one_line():
    with pytest.raises(UserInputError) as raised:
        distributed.per_process_batch(15, 2)
    message = str(raised.value)
    assert "\n" not in message
    assert "data.batch_size=15" in message and "2 processes" in message and "14 or 16" in message


class _Data:
    batch_size = 16


def _ddp_trainer(devices: int = 2) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_each_process_gets_its_share_of_the_global_batch(no_launcher_env):
    data = _Data()
    facts = distributed.set_up_processes(_ddp_trainer(), data, in_multirun=False)
    assert data.batch_size == 8
    assert facts == {schema.WORLD_SIZE: 2, schema.BATCH_SIZE_GLOBAL: 16, schema.BATCH_SIZE_PER_PROCESS: 8}


def test_ddp_that_relaunches_the_command_line_is_refused_inside_a_multirun(no_launcher_env):
    with pytest.raises(UserInputError) as raised:
        distributed.set_up_processes(_ddp_trainer(), _Data(), in_multirun=True)
    message = str(raised.value)
    assert "\n" not in message
    assert "hydra/launcher=local hydra.launcher.tasks_per_node=2" in message and "hydra/launcher=slurm" in message
    # one process, or processes someone else started (SLURM, torchrun, submitit): nothing is relaunched
    assert distributed.set_up_processes(_ddp_trainer(devices=1), _Data(), in_multirun=True)[schema.WORLD_SIZE] == 1


def test_new_metrics_keys_are_declared_apart_from_the_profile_batch():
    for key in (
        schema.WORLD_SIZE,
        schema.BATCH_SIZE_GLOBAL,
        schema.BATCH_SIZE_PER_PROCESS,
        schema.SLURM_JOB_ID,
        schema.SLURM_ARRAY_JOB_ID,
        schema.SLURM_ARRAY_TASK_ID,
        schema.SLURM_RESTART_COUNT,
        schema.RESUMED_FROM,
    ):
        assert schema.declared(key)
    assert len({schema.BATCH_SIZE, schema.BATCH_SIZE_GLOBAL, schema.BATCH_SIZE_PER_PROCESS}) == 3
    documented = (ROOT / "docs" / "METRICS.md").read_text()
    assert "batch_size_global" in documented and "slurm/array_task_id" in documented


# --- ranks and SLURM ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "variables, zero",
    [
        ({}, True),
        ({"SLURM_PROCID": "0"}, True),
        ({"SLURM_PROCID": "1"}, False),
        ({"LOCAL_RANK": "1"}, False),
        ({"RANK": "3"}, False),
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),
    ],
)
def test_rank_zero_is_known_from_the_launchers_environment(no_launcher_env, monkeypatch, variables, zero):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert distributed.is_rank_zero() is zero


def test_slurm_facts_name_the_job_and_its_array(no_launcher_env, monkeypatch):
    assert distributed.slurm_facts() == {}
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert distributed.slurm_facts() == {schema.SLURM_JOB_ID: "42", schema.SLURM_RESTART_COUNT: 0}
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "40")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert distributed.slurm_facts() == {
        schema.SLURM_JOB_ID: "42",
        schema.SLURM_ARRAY_JOB_ID: "40",
        schema.SLURM_ARRAY_TASK_ID: 2,
        schema.SLURM_RESTART_COUNT: 1,
    }


# --- every epoch of every rank sees a different order -------------------------------------------------------------
def test_lightning_passes_set_epoch_on_to_the_data_modules_sampler():
    """Lightning wraps the data module's EpochShuffleSampler in a DistributedSamplerWrapper under DDP; before
    2.6.1 (issue #21454) the wrapper kept set_epoch to itself, so every epoch repeated epoch 0's order."""
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.fullmatch(r"lightning>=2\.6\.1(,.*)?", spec) for spec in required)
    assert Version(lightning.__version__) >= Version("2.6.1")

    orders = {}
    for rank in (0, 1):
        wrapper = DistributedSamplerWrapper(EpochShuffleSampler(64, seed=42), num_replicas=2, rank=rank, shuffle=False)
        for epoch in (0, 1, 2):
            wrapper.set_epoch(epoch)
            orders[rank, epoch] = list(wrapper)
    for epoch in (0, 1, 2):
        assert not set(orders[0, epoch]) & set(orders[1, epoch])
        assert sorted(orders[0, epoch] + orders[1, epoch]) == list(range(64))
    for rank in (0, 1):
        assert len({tuple(orders[rank, epoch]) for epoch in (0, 1, 2)}) == 3


# --- automatic resume ---------------------------------------------------------------------------------------------
def test_a_run_directory_with_last_ckpt_resumes_from_it(make_train_cfg, tmp_path, caplog, no_launcher_env, monkeypatch):
    from lnrepro.tasks.train import build_module
    from lnrepro.training.resume import resume_checkpoint

    cfg = make_train_cfg()
    module = build_module(cfg)
    assert resume_checkpoint(cfg, module) == (None, None) and cfg.ckpt_path is None
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "epoch": 1, "global_step": 6}, last)
    (tmp_path / "run" / "csv").mkdir()
    (tmp_path / "run" / "csv" / "metrics.csv").write_text("epoch,step\n0,3\n")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with caplog.at_level(logging.INFO, logger="lnrepro"):
        assert resume_checkpoint(cfg, module)[1] == str(last)
    assert cfg.ckpt_path == str(last)
    (line,) = [r.getMessage() for r in caplog.records if "resuming from" in r.getMessage()]
    assert f"resuming from {last} (epoch 1, step 6)" in line and "SLURM restart 1" in line
    # Lightning's CSVLogger would delete the first part's history
    assert (tmp_path / "run" / "csv" / "metrics.before-restart-1.csv").read_text() == "epoch,step\n0,3\n"


def test_own_last_ckpt_wins_over_the_starting_ckpt_path_and_eval_only_runs_are_left_alone(make_train_cfg, tmp_path):
    from lnrepro.tasks.train import build_module
    from lnrepro.training.resume import resume_checkpoint

    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    cfg = make_train_cfg("ckpt_path=/somewhere/start.ckpt")
    module = build_module(cfg)
    torch.save({"state_dict": module.state_dict(), "epoch": 0, "global_step": 2}, last)
    assert resume_checkpoint(cfg, module)[1] == str(last)
    cfg = make_train_cfg("ckpt_path=/somewhere/start.ckpt", "train=false")
    assert resume_checkpoint(cfg, module) == (None, "/somewhere/start.ckpt")


def test_a_restarted_run_continues_where_its_checkpoint_left_off(make_train_cfg, tmp_path):
    """No ckpt_path: the second start in the same run directory (what a requeued job is) continues from
    last.ckpt and trains only the epochs that are left."""
    from lnrepro.tasks import train

    first = train(make_train_cfg("trainer.max_epochs=1", "model.width=0.25", "data.image_size=16"))
    assert first[schema.RESUMED_FROM] is None and first[schema.GLOBAL_STEP] == 4
    second = train(make_train_cfg("trainer.max_epochs=2", "model.width=0.25", "data.image_size=16"))
    assert second[schema.RESUMED_FROM] == str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert second[schema.GLOBAL_STEP] == 8 and second[schema.EPOCHS] == 2
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written[schema.WORLD_SIZE] == 1 and written[schema.BATCH_SIZE_PER_PROCESS] == 16


# --- launcher presets ---------------------------------------------------------------------------------------------
def _hydra_launcher(name: str):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
        return cfg.hydra.launcher
    finally:
        GlobalHydra.instance().clear()


def test_the_slurm_preset_allows_requeue_and_asks_for_no_gpu():
    launcher = _hydra_launcher("slurm")
    assert launcher._target_ == "hydra_plugins.lnrepro_launchers.launchers.SlurmLauncher"
    assert launcher.max_num_timeout >= 1 and launcher.additional_parameters.requeue is True
    assert launcher.gpus_per_node is None and launcher.tasks_per_node == 1 and launcher.nodes == 1
    for key in ("partition", "timeout_min", "cpus_per_task", "mem_gb", "signal_delay_s", "setup"):
        assert key in launcher


def test_the_local_preset_is_submitits_local_launcher():
    launcher = _hydra_launcher("local")
    assert launcher._target_ == "hydra_plugins.lnrepro_launchers.launchers.LocalLauncher"
    assert launcher.tasks_per_node == 1


def test_hydra_finds_the_launchers():
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    found = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Launcher)}
    assert {
        "hydra_plugins.lnrepro_launchers.launchers.SlurmLauncher",
        "hydra_plugins.lnrepro_launchers.launchers.LocalLauncher",
        "hydra_plugins.lnrepro_launchers.launchers.SequentialLauncher",
    } <= found


def test_trainer_ddp_takes_its_processes_from_the_job(tmp_path, monkeypatch):
    cfg = compose_config("train", tmp_path, ["trainer=ddp"])  # without the tests' trainer.devices=1
    GlobalHydra.instance().clear()
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (2, 1)
    monkeypatch.setenv("LNREPRO_TASKS_PER_NODE", "4")
    monkeypatch.setenv("LNREPRO_NUM_NODES", "2")
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (4, 2)


def test_a_failed_job_is_named_with_its_log(tmp_path):
    from submitit.core.utils import FailedJobError, JobPaths

    from hydra_plugins.lnrepro_launchers.launchers import failure_line

    class Job:
        job_id, num_tasks = "7_1", 1
        paths = JobPaths(tmp_path / "7_1", job_id="7_1", task_id=0)

    Job.paths.stderr.parent.mkdir()
    Job.paths.stderr.write_text("boom")
    error = FailedJobError(
        "Job (task=0) failed during processing with trace:\n" + "-" * 24 + "\nTraceback ...\n"
        "  File x\nRuntimeError: out of luck\n" + "-" * 24 + "\nYou can check full logs ..."
    )
    line = failure_line(1, ["model.width=0", "seed=1"], Job, error, shared={"seed=1"})
    assert line.startswith("job #1 (model.width=0) failed: RuntimeError: out of luck")
    assert str(Job.paths.stderr) in line and "seed=1" not in line
    line = failure_line(0, ["model.width=0"], Job, UserInputError("width must be > 0 (got 0)"))
    assert "failed: UserInputError: width must be > 0 (got 0)" in line


@pytest.mark.parametrize("code, outcome", [(3, pytest.skip.Exception), (1, pytest.fail.Exception)])
def test_cluster_tests_skip_only_where_the_cluster_cannot_start(tmp_path, code, outcome):
    from tests.test_cluster import bring_up

    script = tmp_path / "slurm-local.sh"
    script.write_text(f"echo 'slurm-local: not root: cannot start a local SLURM cluster'; exit {code}\n")
    with pytest.raises(outcome) as raised:
        bring_up(script)
    assert "not root: cannot start a local SLURM cluster" in str(raised.value)
