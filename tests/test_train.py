"""The training and evaluation tasks end to end on synthetic data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lnrepro.errors import TrainingDivergedError, UserInputError
from lnrepro.models import list_models
from lnrepro.tasks import evaluate, train
from lnrepro.training import ClassificationModule


def read_metrics(cfg) -> dict:
    with open(f"{cfg.paths.output_dir}/metrics.json") as file:
        return json.load(file)


# The smallest setting of each family that still exercises its code paths.
TINY = {
    "mobilenet_v1": ["model.width=0.25"],
    "mobilenet_v2": ["model.width=0.35"],
    "mobilenet_v3_large": ["model.width=0.35"],
    "mobilenet_v3_small": ["model.width=0.35"],
    "shufflenet_v1": ["model.width=0.25", "model.groups=8"],
    "shufflenet_v2": ["model.width=0.5"],
    "ghostnet": ["model.width=0.5"],
    "vgg16": ["model.width=0.125"],
    "resnet34": ["model.width=0.125"],
}


@pytest.mark.parametrize("family", list_models())
def test_each_family_trains_and_writes_a_run(make_train_cfg, family):
    cfg = make_train_cfg(
        f"model={family}",
        *TINY.get(family, []),
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    )
    metrics = train(cfg)
    written = read_metrics(cfg)
    assert written["model"] == family
    for key in ("val/acc", "val/acc_best", "test/acc", "test/acc5", "epochs", "seed"):
        assert key in written, key
    assert 0.0 <= written["test/acc"] <= 1.0
    assert written["epochs"] == 1
    assert math.isclose(float(metrics["test/acc"]), written["test/acc"])
    checkpoints = {p.name for p in Path(cfg.paths.output_dir, "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2


def test_training_learns_a_learnable_task(make_train_cfg):
    """Synthetic images whose label is drawn into the pixels: a working loop must fit them."""
    cfg = make_train_cfg(
        "model=shufflenet_v2",
        "model.width=0.5",
        "optimizer=sgd",
        "optimizer.lr=0.05",
        "scheduler=none",
        "trainer.max_epochs=15",
        "data.train_size=128",
        "data.num_classes=2",
        "data.val_size=64",
        "data.test_size=64",
        "data.batch_size=32",
    )
    import hydra

    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup()
    for split in (datamodule.train_set, datamodule.val_set, datamodule.test_set):
        # label 0: left half bright, label 1: right half bright (same mean brightness, so only the layout tells)
        left_bright = (split.labels == 0).view(-1, 1, 1, 1)
        split.images[..., :16] = torch.where(left_bright, 200, 40).to(torch.uint8)
        split.images[..., 16:] = torch.where(left_bright, 40, 200).to(torch.uint8)
        split.images[:] += torch.randint(0, 40, split.images.shape, dtype=torch.uint8)
    from lnrepro.tasks.train import build_module

    module = build_module(cfg)
    trainer = pl.Trainer(
        max_epochs=15,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    assert results[0]["test/acc"] > 0.9


def test_resume_from_last_checkpoint_matches_an_uninterrupted_run(make_train_cfg, tmp_path, fake_cifar10):
    # CIFAR-format data so that shuffling, crop/flip/cutout and dropout all draw random numbers.
    common = [
        "model=shufflenet_v2",
        "model.width=0.5",
        "trainer.max_epochs=3",
        "data=cifar10",
        f"data.root={fake_cifar10}",
        "data.verify_checksums=false",
        "data.val_size=40",
        "data.batch_size=16",
        "data.cutout=8",
        "model.dropout=0.2",
    ]
    full = make_train_cfg(*common, output_dir=tmp_path / "full")
    train(full)

    # The same run "killed" after its second epoch: a callback raises once epoch 2 starts.
    crashed = make_train_cfg(
        *common,
        "+callbacks.crash._target_=tests.helpers.CrashAtEpoch",
        "+callbacks.crash.epoch=2",
        output_dir=tmp_path / "crashed",
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashed)
    last = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 1

    resumed = make_train_cfg(*common, f"ckpt_path={last}", output_dir=tmp_path / "crashed")
    train(resumed)
    expected, got = read_metrics(full), read_metrics(resumed)
    for key in ("val/acc", "val/acc_best", "val/loss", "test/acc", "test/loss", "train/loss_epoch", "epochs"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key


def test_eval_reproduces_the_test_accuracy_of_train(tiny_run, make_eval_cfg):
    trained = json.loads((tiny_run.run_dir / "metrics.json").read_text())
    eval_cfg = make_eval_cfg(f"ckpt_path={tiny_run.best_checkpoint}")
    evaluated = evaluate(eval_cfg)
    assert float(evaluated["test/acc"]) == pytest.approx(trained["test/acc"], abs=1e-7)
    assert float(evaluated["test/loss"]) == pytest.approx(trained["test/loss"], rel=1e-5)
    with open(f"{eval_cfg.paths.output_dir}/metrics.json") as file:
        assert json.load(file)["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-7)


def test_eval_applies_data_overrides_to_the_stored_run(tiny_run, make_eval_cfg):
    ckpt = tiny_run.best_checkpoint
    overrides = ["data=synthetic", "data.test_size=16", "data.batch_size=8", "profile.runtimes=[]"]
    evaluated = evaluate(make_eval_cfg(f"ckpt_path={ckpt}", *overrides))
    assert evaluated["data"] == "synthetic"


def test_nan_loss_stops_with_the_step_and_keeps_checkpoints(make_train_cfg, tmp_path):
    cfg = make_train_cfg(
        "model=shufflenet_v2",
        "model.width=0.5",
        "trainer.max_epochs=3",
        "+callbacks.poison._target_=tests.helpers.PoisonWeightsAtEpoch",
        "+callbacks.poison.epoch=1",
    )
    with pytest.raises(
        TrainingDivergedError, match=r"became nan at epoch 1, batch 0.*last good checkpoint: .*last\.ckpt"
    ):
        train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    assert state["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.width=0"], "width"),
        (["model.width=-1"], "width"),
        (["model.name=nonexistent"], "unknown model 'nonexistent'"),
        (["data.batch_size=0"], "data.batch_size must be a positive integer"),
        (["data=cifar10", "data.root=/nonexistent/cifar", "data.download=false"], "data.root"),
        (["ckpt_path=/nonexistent/last.ckpt"], "does not exist"),
    ],
)
def test_bad_input_fails_before_training_with_a_clear_message(make_train_cfg, overrides, message):
    cfg = make_train_cfg(*overrides)
    with pytest.raises(UserInputError, match=message):
        train(cfg)


def test_corrupt_checkpoint_is_refused(make_train_cfg, tmp_path):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x80\x04 this is not a checkpoint")
    with pytest.raises(UserInputError, match="cannot be read.*corrupt"):
        train(make_train_cfg(f"ckpt_path={corrupt}"))


def test_checkpoint_of_another_model_is_refused(make_train_cfg, tmp_path):
    ckpt = train(make_train_cfg("model=shufflenet_v2", "model.width=0.5", output_dir=tmp_path / "a"))["test/ckpt_path"]
    with pytest.raises(
        UserInputError,
        match=r"does not fit the configured model: key 'net\.stage2\.0\.branch1\.2\.weight' has shape "
        r"\(24, 24, 1, 1\), the model needs \(58, 24, 1, 1\)",
    ):
        train(make_train_cfg("model=shufflenet_v2", "model.width=1.0", f"ckpt_path={ckpt}", output_dir=tmp_path / "b"))


def tiny_module(**options) -> ClassificationModule:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    return ClassificationModule(net, optimizer=None, scheduler=None, num_classes=10, **options)


def test_model_summary_counts_the_flops_of_an_example_input():
    from lightning.pytorch.utilities.model_summary import ModelSummary

    module = tiny_module(input_size=[3, 8, 8])
    assert module.example_input_array.shape == (1, 3, 8, 8)
    # FLOPs = 2 x multiply-adds: the 3x3 convolution 3 -> 4 on 6x6 outputs, then the linear layer 4 -> 10.
    assert ModelSummary(module, max_depth=1).total_flops == 2 * (6 * 6 * 4 * 3 * 9 + 4 * 10)
    assert tiny_module().example_input_array is None  # unset without input_size


def test_compiled_module_keeps_plain_state_dict_keys_and_an_uncompiled_net():
    plain, compiled = tiny_module(), tiny_module(compile=True)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert not any("_orig_mod" in key for key in compiled.state_dict())
    compiled.load_state_dict(plain.state_dict())
    assert compiled._compiled_call_impl is not None  # the steps' self(images) runs compiled
    assert compiled.net._compiled_call_impl is None  # profiling and export get the plain network
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), plain(images))


@pytest.mark.parametrize(
    "switch",
    [
        # the default callbacks hold a RichProgressBar, which Lightning refuses beside enable_progress_bar=False
        "trainer.enable_progress_bar=false",
        "trainer.enable_checkpointing=false",
        "~logger",  # no logger: the default callbacks' LearningRateMonitor has nothing to log to
        "logger=none",
        "callbacks=none",
    ],
)
def test_trainer_callback_and_logger_switches_work_as_they_read(tmp_path, switch):
    from tests.conftest import FAST, SYNTHETIC, compose_config

    # FAST turns the bar off; the default callbacks keep their progress bar (make_train_cfg would remove it)
    cfg = compose_config("train", tmp_path, [*FAST, *SYNTHETIC, "model.width=0.5", switch])
    metrics = train(cfg)
    assert 0.0 <= read_metrics(cfg)["test/acc"] <= 1.0 and metrics["epochs"] == 1
    checkpoints = {path.name for path in tmp_path.rglob("*.ckpt")}
    if switch == "trainer.enable_checkpointing=false":
        assert checkpoints == set() and metrics["test/ckpt_path"] is None  # tested on the fit's last weights
    elif switch != "callbacks=none":  # (without lnrepro's callbacks, Lightning checkpoints as it does by default)
        assert "last.ckpt" in checkpoints
    assert (tmp_path / "csv").exists() == (switch not in ("~logger", "logger=none"))
