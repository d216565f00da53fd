"""Shared fixtures: configs composed the way train.py/eval.py compose them, pointed at a temporary directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import lnrepro.conf  # noqa: F401  registers the resolvers the configs use

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10"

# Tiny synthetic 32x32 data, unless a test picks other data.
SYNTHETIC = ["data=synthetic", "data.train_size=64", "data.val_size=32", "data.test_size=32", "data.batch_size=16"]
# Quick: CPU, no progress bar.
FAST = [
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "print_config=false",
    # the end-of-fit latency/throughput/memory measurement has its own tests
    "profile.end_of_fit=false",
]
NO_PROGRESS_BAR = ["~callbacks.rich_progress_bar"]


def compose_config(config_name: str, output_dir: Path, overrides: list[str]) -> DictConfig:
    """Compose like `@hydra.main` does (including the `hydra` node), with every output under `output_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


@dataclass(frozen=True)
class TinyRun:
    metrics: dict  # what the train task returned (also in run_dir/metrics.json)
    run_dir: Path
    best_checkpoint: Path  # the one testing used: test/ckpt_path
    last_checkpoint: Path


# Tiny, but everything a run writes: two epochs, testing, and the end-of-fit profile in the default runtimes.
TINY_RUN = [
    "model=ghostnet",
    "model.width=0.25",
    "data.image_size=16",
    "trainer.max_epochs=2",
    "profile.end_of_fit=true",
    "profile.runs=2",
    "profile.throughput_runs=1",
    "profile.warmup=0",
    "profile.batch_size=2",
    "profile.calibration_images=16",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """One finished run per test session, for the tests that only read a run (evaluate it, rebuild it, check its
    files): training one per test cost seconds each. Read it, never write into it."""
    from lnrepro.tasks import train

    out = tmp_path_factory.mktemp("tiny_run")
    metrics = train(compose_config("train", out, FAST + NO_PROGRESS_BAR + SYNTHETIC + TINY_RUN))
    GlobalHydra.instance().clear()
    return TinyRun(metrics, out, Path(metrics["test/ckpt_path"]), out / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def one_thread():
    """Small networks on tiny batches gain nothing from more threads, and lose a lot when the cores are shared
    (test modules of many small networks opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_train_cfg(tmp_path):
    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        data = [] if any(o.startswith("data=") for o in overrides) else SYNTHETIC
        bar = [] if any(o.startswith("callbacks=") for o in overrides) else NO_PROGRESS_BAR
        return compose_config("train", output_dir or tmp_path / "run", FAST + bar + data + list(overrides))

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture
def make_eval_cfg(tmp_path):
    def make(*overrides: str) -> DictConfig:
        fast = [
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
        ]
        return compose_config("eval", tmp_path / "eval", fast + list(overrides))

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture(autouse=True)
def _quiet_and_offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("LNREPRO_ROOT", str(ROOT))
    os.environ.setdefault("OMP_NUM_THREADS", "2")


def write_fake_cifar10(root: Path, images_per_file: int = 40, seed: int = 0) -> Path:
    """CIFAR-10 in torchvision's on-disk format (pickled dicts of uint8 rows), small and random."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            "batch_label": name.encode(),
            "labels": rng.integers(0, 10, images_per_file).tolist(),
            "data": rng.integers(0, 256, (images_per_file, 3072), dtype=np.uint8),
            "filenames": [f"{name}_{i}.png".encode() for i in range(images_per_file)],
        }
        with open(folder / name, "wb") as file:
            pickle.dump(entry, file)
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump(
            {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": images_per_file, "num_vis": 3072},
            file,
        )
    return root


@pytest.fixture
def fake_cifar10(tmp_path) -> Path:
    return write_fake_cifar10(tmp_path / "cifar10")
