"""W&B never costs the run: an unreachable server ends in an offline run of the same id, after a bounded wait, and a
run resumed from a checkpoint continues its W&B run. What reached W&B is read back from the offline run files."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

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
    "trainer.enable_progress_bar=false",
    "~callbacks.rich_progress_bar",
    "print_config=false",
    "profile.end_of_fit=false",
    "model.width=0.25",
    "data.image_size=16",
    "trainer.enable_model_summary=false",
]


def _closed_port() -> int:
    """A local port nothing listens on: a connection is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_online(tmp_path: Path, base_url: str, *overrides: str) -> tuple[subprocess.CompletedProcess, float]:
    """train.py with W&B online, a well-formed API key and the server at `base_url`; the wall time it took."""
    env = {
        **os.environ,
        "WANDB_MODE": "online",
        "WANDB_API_KEY": "0123456789abcdef" * 2 + "01234567",
        "WANDB_BASE_URL": base_url,
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_SILENT": "true",
        "HYDRA_FULL_ERROR": "0",
    }
    start = time.monotonic()
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        f"paths.log_dir={tmp_path / 'logs'}",
        *QUICK,
        "logger=wandb",
        *overrides,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    return result, time.monotonic() - start


@pytest.mark.parametrize("server", ["refuses", "never_answers"])
def test_unreachable_server_falls_back_to_the_same_run_offline(tmp_path, server):
    """`refuses`: nothing listens on the port (wandb retries until its deadline all the same). `never_answers`: a
    socket accepts the connection and never replies, like a blackholed address (wandb's own deadline is 90 s, after
    which the run used to end in a CommError before training)."""
    from tests.wandb_offline import read_offline_run

    listener = socket.create_server(("127.0.0.1", 0), backlog=64) if server == "never_answers" else None
    port = listener.getsockname()[1] if listener else _closed_port()
    try:
        result, seconds = _run_online(tmp_path, f"http://127.0.0.1:{port}", "logger.wandb.init_timeout=3")
    finally:
        if listener:
            listener.close()
    assert result.returncode == 0, result.stderr[-3000:]
    assert seconds < 60, f"{seconds:.0f} s"

    (run_dir,) = (tmp_path / "logs").glob("train/runs/*")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (failed,) = (run_dir / "wandb").glob("run-*")  # what the online attempt left
    run = read_offline_run(offline)
    assert run.run_id == failed.name.rsplit("-", 1)[1] == offline.name.rsplit("-", 1)[1]  # the same run, offline
    assert run.project == "lnrepro" and run.config["model.width"] == 0.25
    assert "test/acc" in run.history_keys and run.summary["test/acc"] == pytest.approx(metrics["test/acc"])

    log = (run_dir / "train.log").read_text().splitlines()
    warnings = [line for line in log if "W&B could not start online" in line]
    assert len(warnings) == 1 and f"`wandb sync {offline}`" in warnings[0], warnings
    waited = re.search(r"after (\d+) s\)", warnings[0])
    assert waited and int(waited.group(1)) <= 3 + 2 and run.run_id in warnings[0]  # init_timeout=3


def _training_steps(run) -> list[int]:
    """Lightning's step of each history row that holds a train/val/test metric."""
    return [
        row["trainer/global_step"]
        for row in run.history
        if "trainer/global_step" in row and any(key.startswith(("train/", "val/", "test/")) for key in row)
    ]


def test_a_resumed_run_continues_its_wandb_run(make_train_cfg, tmp_path):
    """Offline (conftest): the resumed run writes a second piece of the same W&B run, its steps after the first's."""
    from lnrepro.callbacks import WandbRunId
    from lnrepro.tasks import train
    from tests.wandb_offline import read_offline_run

    small = ["logger=wandb", "model.width=0.25", "data.image_size=16"]  # 64 images, batch 16: 4 steps an epoch
    first = make_train_cfg(*small, output_dir=tmp_path / "first")
    train(first)
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    run_id = WandbRunId.run_id_in(torch.load(last, map_location="cpu", weights_only=True))

    second = make_train_cfg(*small, "trainer.max_epochs=2", f"ckpt_path={last}", output_dir=tmp_path / "second")
    metrics = train(second)
    assert metrics["global_step"] == 8

    (first_dir,) = (tmp_path / "first" / "wandb").glob("offline-run-*")
    (second_dir,) = (tmp_path / "second" / "wandb").glob("offline-run-*")
    before, after = read_offline_run(first_dir), read_offline_run(second_dir)
    assert run_id and before.run_id == after.run_id == run_id
    assert max(_training_steps(before)) == 4
    assert 4 < min(_training_steps(after)) and max(_training_steps(after)) == 8  # continues, not from 0
    assert "train/acc" in after.history_keys and "test/acc" in after.summary
    # ...and the second run's checkpoints name the same W&B run, for a third piece
    resumed_last = torch.load(tmp_path / "second" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert WandbRunId.run_id_in(resumed_last) == run_id


def test_the_configured_run_id_wins_over_the_checkpoint(make_train_cfg):
    from lnrepro.tasks.instantiate import instantiate_loggers

    checkpoint = {"state_dict": {}, "callbacks": {"WandbRunId": {"run_id": "fromckpt"}}}
    (logger,) = instantiate_loggers(make_train_cfg("logger=wandb").logger, checkpoint=checkpoint)
    assert logger.version == "fromckpt"
    (logger,) = instantiate_loggers(
        make_train_cfg("logger=wandb", "+logger.wandb.id=mine").logger, checkpoint=checkpoint
    )
    assert logger.version == "mine"
    (fresh,) = instantiate_loggers(make_train_cfg("logger=wandb").logger)
    assert re.fullmatch(r"[a-z0-9]{8}", fresh.version)  # chosen before W&B starts, for the fallback and checkpoints
    assert fresh._wandb_init["settings"]["init_timeout"] == 15
