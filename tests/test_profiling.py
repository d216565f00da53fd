"""Efficiency measurements: counts against hand-computed values, timings and memory for sanity, lnrepro-profile and
the EfficiencyProfile callback end to end on tiny inputs."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from lnrepro.models import build_model
from lnrepro.models.layers import DepthwiseSeparable, GhostModule
from lnrepro.profiling import (
    count_macs,
    count_parameters,
    inference_peak_memory,
    inference_throughput,
    latency,
    training_peak_memory,
    training_throughput,
)
from tests.conftest import compose_config

SIZE = (16, 16, 16)  # C x H x W of the small blocks' input
PIXELS = 16 * 16
BYTES = 4  # fp32


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def test_single_conv_counts():
    conv = nn.Conv2d(16, 32, 3, padding=1)  # with bias
    weights = 32 * 16 * 3 * 3 + 32
    assert count_parameters(conv).total == count_parameters(conv).conv == weights
    macs = count_macs(conv, SIZE)
    assert macs.macs == macs.conv_macs == 32 * 16 * 9 * PIXELS  # the bias adds are not multiply-adds
    assert macs.flops == 2 * macs.macs
    assert macs.mac_bytes == (16 * PIXELS + 32 * PIXELS + weights) * BYTES


def test_depthwise_separable_counts():
    block = DepthwiseSeparable(16, 32)  # dw 3x3 + BN + ReLU, pw 1x1 + BN + ReLU, no conv bias
    depthwise, pointwise, batchnorms = 16 * 9, 16 * 32, 2 * 16 + 2 * 32
    params = count_parameters(block)
    assert (params.total, params.trainable, params.conv) == (depthwise + pointwise + batchnorms,) * 2 + (
        depthwise + pointwise,
    )
    macs = count_macs(block, SIZE)
    assert macs.macs == macs.conv_macs == (depthwise + pointwise) * PIXELS  # BN/ReLU are not counted
    per_layer = {layer.name: layer.mac_bytes for layer in macs.layers if layer.mac_bytes}
    assert per_layer == {
        "0.0": (16 * PIXELS + 16 * PIXELS + depthwise) * BYTES,
        "1.0": (16 * PIXELS + 32 * PIXELS + pointwise) * BYTES,
    }
    assert macs.mac_bytes == sum(per_layer.values())


def test_ghost_module_counts():
    ghost = GhostModule(16, 32)  # 16 intrinsic maps by a 1x1 conv, 16 ghosts by a 3x3 depthwise conv on them
    primary, cheap, batchnorms = 16 * 16, 16 * 9, 2 * 16 + 2 * 16
    params = count_parameters(ghost)
    assert (params.total, params.conv) == (primary + cheap + batchnorms, primary + cheap)
    assert count_macs(ghost, SIZE).macs == count_macs(ghost, SIZE).conv_macs == (primary + cheap) * PIXELS
    expected = ((16 + 16) * PIXELS + primary + (16 + 16) * PIXELS + cheap) * BYTES
    assert count_macs(ghost, SIZE).mac_bytes == expected


def test_mobilenet_v2_matches_the_published_300m_multiply_adds():
    net = build_model("mobilenet_v2", width=1.0)
    macs = count_macs(net, 224)
    assert macs.macs == pytest.approx(300e6, rel=0.01)  # the paper's Table 4 / torchvision's 0.30 "GFLOPS"
    assert count_parameters(net).total == pytest.approx(3.50e6, rel=0.01)
    rows = {layer.name: layer for layer in macs.layers}
    assert rows["classifier.1"].macs == 1280 * 1000 and rows["classifier.1"].output_shape == (1000,)
    assert macs.macs - macs.conv_macs == 1280 * 1000  # only the classifier is outside the convolutions


def test_counting_leaves_the_model_as_it_was():
    net = tiny_net().train()
    before = net[1].running_mean.clone()
    count_macs(net, 8)
    assert net.training and torch.equal(net[1].running_mean, before)


def test_latency_and_throughput_are_positive_with_a_sane_spread():
    net = tiny_net()
    result = latency(net, 8, runs=10, warmup=2)
    assert 0 < result.median_ms <= result.p90_ms
    assert result.context["batch_size"] == 1 and result.context["input_size"] == "3x8x8"
    assert set(result.context) == {"device", "dtype", "threads", "batch_size", "input_size", "torch_version"}
    assert inference_throughput(net, 4, 8, runs=3, warmup=1).images_per_s > 0
    weights = net[0].weight.clone()
    assert training_throughput(net, 4, 8, runs=2, warmup=1).images_per_s > 0
    assert torch.equal(net[0].weight, weights)  # trained a copy


def test_peak_memory_is_positive_and_grows_with_the_batch():
    net = tiny_net()
    small, large = (inference_peak_memory(net, batch, 16).peak_mib for batch in (2, 64))
    assert 0 < small < large
    small, large = (training_peak_memory(net, batch, 16).peak_mib for batch in (2, 64))
    assert 0 < small < large
    # Training keeps activations, gradients and momentum: more than inference at the same batch.
    assert large > inference_peak_memory(net, 64, 16).peak_mib


def test_without_training_figures_no_training_peak_is_written():
    """`memory/peak_mib` is training's peak: with `profile.train=false` only the inference peak is written (it used
    to stand in under the training key, which reports show as training memory)."""
    from lnrepro.profiling import ProfileSettings, measured_metrics

    settings = ProfileSettings.from_config({"runtimes": [], "train": False, "batch_size": 4})
    metrics = measured_metrics(tiny_net(), 16, settings)
    assert metrics["memory/infer_peak_mib"] > 0 and "memory/peak_mib" not in metrics


def test_profile_settings_are_declared_once_by_the_profile_group(tmp_path):
    """conf/profile/default.yaml is the one declaration of the defaults: every key of the composed group is a
    setting, and settings made in plain Python start from the same values."""
    import dataclasses

    from lnrepro.profiling import ProfileSettings

    composed = compose_config("profile", tmp_path, []).profile
    assert set(composed) == {field.name for field in dataclasses.fields(ProfileSettings)}
    defaults = ProfileSettings.from_config()
    assert ProfileSettings.from_config(composed) == defaults
    assert ProfileSettings.from_config({"runs": 7}) == dataclasses.replace(defaults, runs=7)


def test_measured_metrics_from_plain_python_needs_no_settings_and_no_hydra():
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import sys, torch\n"
        "from lnrepro.profiling import measured_metrics\n"
        "net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),"
        " torch.nn.Linear(4, 10))\n"
        "metrics = measured_metrics(net, 8)\n"
        "assert 'hydra' not in sys.modules\n"
        "print(sorted(key for key in metrics if key.startswith('infer/')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    timed = result.stdout.strip().splitlines()[-1]  # the declared default runtimes, each timed
    assert timed == str(["infer/eager_imgs_per_s", "infer/onnxruntime_imgs_per_s", "infer/onnxruntime_int8_imgs_per_s"])


PROFILE_FAST = [
    "data=synthetic",
    "data.image_size=16",
    "profile.runs=3",
    "profile.warmup=1",
    "profile.batch_size=2",
    "profile.memory=false",
    "profile.train=false",
]


def test_profile_task_gives_one_row_per_model(tmp_path, capsys):
    from lnrepro.tasks.profile import profile

    rows = []
    for number, model in enumerate(["shufflenet_v2", "mobilenet_v2"]):
        cfg = compose_config("profile", tmp_path / str(number), [f"model={model}", "model.width=0.25", *PROFILE_FAST])
        rows.append(profile(cfg))
        saved = json.loads((tmp_path / str(number) / "metrics.json").read_text())
        assert saved["model"] == model and saved["macs"] > 0 and saved["latency/eager_ms"] > 0
    printed = capsys.readouterr().out
    assert printed.count("shufflenet_v2") == printed.count("mobilenet_v2") == 4  # counts, then 3 runtimes
    assert rows[0]["flops"] == 2 * rows[0]["macs"]


CALLBACK_KEYS = {
    "params",
    "params_trainable",
    "params_conv",
    "macs",
    "flops",
    "flops_conv",
    "mac_bytes",
    "train/imgs_per_s",
    "train/epoch_s",
    "val/epoch_s",
    "memory/peak_mib",
    "device",
    "dtype",
    "threads",
    "batch_size",
    "input_size",
    "torch_version",
}
# measured by the train task after the fit, in each runtime of profile.runtimes
RUNTIME_KEYS = {"latency/eager_ms", "latency/eager_p90_ms", "infer/eager_imgs_per_s", "latency/onnxruntime_ms"}


def test_callback_fills_every_key_on_a_tiny_run(make_train_cfg, monkeypatch):
    train_task = importlib.import_module("lnrepro.tasks.train")  # the package's `train` attribute is the function
    made = []
    real = train_task.instantiate_callbacks
    monkeypatch.setattr(train_task, "instantiate_callbacks", lambda group: made.extend(real(group)) or made)
    cfg = make_train_cfg(
        "model=shufflenet_v2",
        "model.width=0.25",
        "data.image_size=16",
        "trainer.max_epochs=2",
        "test=false",
        "profile.end_of_fit=true",
        "profile.batch_size=16",
        "callbacks.efficiency_profile.warmup_steps=2",
        "profile.runs=3",
        "logger=csv",
    )
    train_task.train(cfg)
    profile = next(c for c in made if type(c).__name__ == "EfficiencyProfile")
    assert CALLBACK_KEYS <= set(profile.metrics)
    assert profile.metrics["train/imgs_per_s"] > 0 and profile.metrics["memory/peak_mib"] > 0
    assert profile.metrics["batch_size"] == 16 and profile.metrics["input_size"] == "3x16x16"
    csv_header = next(Path(cfg.paths.output_dir).rglob("metrics.csv")).read_text().splitlines()[0]
    assert "train/imgs_per_s" in csv_header and "latency/eager_ms" in csv_header  # reached the logger
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert CALLBACK_KEYS | RUNTIME_KEYS <= set(saved)  # the train task merges the callback's figures and its own


def test_callback_times_no_epoch_whose_start_a_mid_epoch_resume_skipped(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    from lnrepro.callbacks import EfficiencyProfile

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = tiny_net()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(TensorDataset(torch.randn(40, 3, 8, 8), torch.randint(0, 10, (40,))), batch_size=4)

    def fit(epochs, callbacks, ckpt_path=None):
        pl.Trainer(
            max_epochs=epochs,
            callbacks=callbacks,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            accelerator="cpu",
        ).fit(Tiny(), data, ckpt_path=ckpt_path)

    # 10 steps per epoch: a checkpoint at step 15 is in the middle of epoch 1.
    fit(2, [ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=15, save_top_k=-1)])
    (mid_epoch,) = (tmp_path / "ckpt").glob("*step=15*.ckpt")
    profile = EfficiencyProfile(image_size=8, warmup_steps=1, profile={"end_of_fit": False})
    start = time.perf_counter()
    fit(3, [profile], ckpt_path=mid_epoch)  # the rest of epoch 1, then epoch 2
    assert len(profile._epoch_seconds) == 1  # epoch 2 only: epoch 1's start was never seen
    assert 0 < profile.metrics["train/epoch_s"] < time.perf_counter() - start


def _write_wandb_log(path: Path, records: list[bytes]) -> None:
    """A `.wandb` file in W&B's LevelDB-style log format (crc left 0: the reader does not check it)."""
    from tests.wandb_offline import BLOCK, CHUNK, FIRST, FULL, HEADER, LAST, MIDDLE

    out = bytearray(HEADER.pack(b":W&B", 0xBEE1, 0))
    for data in records:
        first = True
        while True:
            left = BLOCK - len(out) % BLOCK
            if left < CHUNK.size:
                out += bytes(left)
                continue
            piece, data = data[: left - CHUNK.size], data[left - CHUNK.size :]
            kind = (FULL if not data else FIRST) if first else (LAST if not data else MIDDLE)
            out += CHUNK.pack(0, len(piece), kind) + piece
            first = False
            if not data:
                break
    path.write_bytes(bytes(out))


def test_offline_reader_joins_records_split_across_blocks(tmp_path):
    from wandb.proto import wandb_internal_pb2 as pb

    from tests.wandb_offline import read_offline_run

    big, small = pb.Record(), pb.Record()
    big.config.update.add(key="model.width", value_json="0.5")
    big.config.update.add(key="notes", value_json=json.dumps("x" * 80_000))  # spans three 32 KiB blocks
    item = small.summary.update.add(value_json='"table-file"')
    item.nested_key.extend(["profile/layers", "_type"])
    small.summary.update.add(key="flops", value_json="42")
    _write_wandb_log(
        tmp_path / "run-x.wandb", [small.SerializeToString(), big.SerializeToString(), small.SerializeToString()]
    )
    run = read_offline_run(tmp_path, wait_s=0)  # a hand-written file: no exit record to wait for
    assert run.config["model.width"] == 0.5 and len(run.config["notes"]) == 80_000
    assert run.summary["flops"] == 42 and set(run.tables()) == {"profile/layers"}


def test_wandb_offline_run_holds_the_profile(make_train_cfg):
    """What reached W&B, read back from the offline run file: the profile and the test accuracy in the summary,
    the config flattened, and the per-layer table (its rows in the run's files)."""
    from lnrepro.tasks import train
    from tests.wandb_offline import read_offline_run

    cfg = make_train_cfg(
        "logger=wandb",
        "model=shufflenet_v2",
        "model.width=0.25",
        "data.image_size=16",
        "profile.end_of_fit=true",
        "callbacks.efficiency_profile.warmup_steps=1",
        "profile.runs=3",
        "profile.warmup=1",
        "profile.throughput_runs=1",
    )
    metrics = train(cfg)
    (run_dir,) = (Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*")
    run = read_offline_run(run_dir)

    for key in ("params", "flops", "mac_bytes", "train/imgs_per_s", "latency/eager_ms", "test/acc"):
        assert isinstance(run.summary.get(key), (int, float)), key
    assert run.summary["flops"] == metrics["flops"] == 2 * run.summary["macs"]
    assert run.summary["device"] == "cpu" and run.summary["input_size"] == "3x16x16"  # the context strings too

    assert run.config["model.width"] == 0.25 and run.config["optimizer.lr"] == cfg.optimizer.lr
    assert "model" not in run.config  # flattened, not nested

    table = run.tables()["profile/layers"]
    content = json.loads((run_dir / "files" / table["path"]).read_text())
    assert content["columns"] == ["layer", "type", "macs", "flops", "params", "output_shape", "mac_bytes"]
    rows = {row[0]: row for row in content["data"]}
    assert sum(row[2] for row in rows.values()) == run.summary["macs"]
    conv = next(row for row in content["data"] if row[1] == "Conv2d")
    assert conv[3] == 2 * conv[2] and conv[6] > 0 and conv[5].count("x") == 2


def test_profile_task_shows_its_runtimes_on_a_progress_bar(tmp_path, monkeypatch):
    import io

    import rich
    from rich.console import Console

    from lnrepro.tasks.profile import profile

    screen = io.StringIO()
    monkeypatch.setattr(rich, "_console", Console(file=screen, force_terminal=True, width=120))
    profile(
        compose_config(
            "profile",
            tmp_path,
            ["model=shufflenet_v2", "model.width=0.25", *PROFILE_FAST, "profile.runtimes=[eager,onnxruntime]"],
        )
    )
    drawn = screen.getvalue()
    assert "shufflenet_v2: eager" in drawn and "shufflenet_v2: onnxruntime" in drawn and "2/2" in drawn
