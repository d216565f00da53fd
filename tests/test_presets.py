"""conf/experiment presets: each composes, states its source, and holds the values its source gives."""

from __future__ import annotations

import csv
import itertools
import re
import subprocess

import pytest
import torch
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lnrepro.reporting.reference import shipped_table
from tests.conftest import CONF, ROOT

PRESETS = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))
GHOST_VS_DWPW = shipped_table("ghost_vs_dwpw")


def preset_file(name: str):
    return OmegaConf.load(CONF / "experiment" / f"{name}.yaml")


def sweep(cfg) -> list[dict[str, str]]:
    """The jobs Hydra's basic sweeper makes of `hydra.sweeper.params` (its own expansion code)."""
    params = cfg.hydra.sweeper.params or {}
    overrides = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    (batch,) = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    return [dict(job.split("=", 1) for job in jobs) for jobs in batch]


def resolved(cfg) -> dict:
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    return OmegaConf.to_container(OmegaConf.create(plain), resolve=True)


def test_there_are_presets_for_every_family_on_imagenet():
    for name in (
        "ghost_vs_dwpw_cifar10",
        "width_sweep",
        "imagenet_mobilenet_v1",
        "imagenet_mobilenet_v2",
        "imagenet_mobilenet_v3",
        "imagenet_shufflenet_v1",
        "imagenet_shufflenet_v2",
        "imagenet_ghostnet",
    ):
        assert name in PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_is_global_and_states_its_source(name):
    lines = (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"
    header = " ".join(line for line in lines[1:12] if line.startswith("#")).lower()
    assert any(word in header for word in ("source", "recipe", "paper")), header


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_resolves_and_builds_its_optimizer(make_train_cfg, name):
    data = ["data=imagenet"] if name.startswith("imagenet_") else []
    cfg = make_train_cfg(f"experiment={name}", *data)
    values = resolved(cfg)
    assert values["model"]["stem"] in ("cifar", "imagenet")
    optimizer = instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
    schedule = instantiate(cfg.scheduler)(optimizer, steps_per_epoch=10, max_epochs=cfg.trainer.max_epochs)
    assert schedule["interval"] in ("step", "epoch")
    for job in sweep(cfg):  # every job of its sweep composes too
        job_cfg = make_train_cfg(f"experiment={name}", *data, *[f"{k}={v}" for k, v in job.items()])
        resolved(job_cfg)


def test_imagenet_mobilenet_v2_is_torchvisions_recipe(make_train_cfg):
    cfg = make_train_cfg("experiment=imagenet_mobilenet_v2", "data=imagenet")
    assert cfg.model.name == "mobilenet_v2" and cfg.data.name == "imagenet" and cfg.model.stem == "imagenet"
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.momentum) == (0.045, 4e-5, 0.9)
    assert cfg.scheduler._target_.endswith("exponential") and cfg.scheduler.gamma == 0.98
    assert cfg.data.batch_size == 256
    assert preset_file("imagenet_mobilenet_v2").trainer.max_epochs == 300


def test_imagenet_mobilenet_v3_is_torchvisions_rmsprop_recipe(make_train_cfg):
    cfg = make_train_cfg("experiment=imagenet_mobilenet_v3", "data=imagenet")
    optimizer = instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
    assert type(optimizer).__name__ == "RMSpropTF"
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["alpha"], group["momentum"]) == (0.064, 1e-5, 0.9, 0.9)
    assert group["eps"] == pytest.approx(0.0316**2, rel=0.01)  # TF-style: inside the square root
    assert cfg.scheduler._target_.endswith(".step") and (cfg.scheduler.step_size, cfg.scheduler.gamma) == (2, 0.973)
    assert cfg.data.batch_size == 1024 and cfg.data.random_erasing == 0.2 and cfg.data.auto_augment
    assert preset_file("imagenet_mobilenet_v3").trainer.max_epochs == 600
    assert (
        make_train_cfg("experiment=imagenet_mobilenet_v3", "data=imagenet", "model=mobilenet_v3_small").model.name
        == "mobilenet_v3_small"
    )


def test_imagenet_shufflenet_v2_is_the_authors_recipe(make_train_cfg):
    cfg = make_train_cfg("experiment=imagenet_shufflenet_v2", "data=imagenet")
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.data.batch_size) == (0.5, 4e-5, 1024)
    assert cfg.module.label_smoothing == 0.1
    assert preset_file("imagenet_shufflenet_v2").trainer.max_epochs == 240  # 3e5 iterations x 1024 / 1.28M


def ghost_vs_dwpw_rows() -> list[dict[str, str]]:
    with open(GHOST_VS_DWPW, newline="") as file:
        return list(csv.DictReader(file))


def test_ghost_vs_dwpw_preset_sweeps_exactly_its_nine_runs(make_train_cfg):
    cfg = make_train_cfg("experiment=ghost_vs_dwpw_cifar10", "data=cifar10")
    jobs = sweep(cfg)
    combinations = {(job["model"], job["model.conv"]) for job in jobs}
    assert len(jobs) == 9 and combinations == set(
        itertools.product(("vgg16", "resnet34", "ghostnet"), ("standard", "dwpw", "ghost"))
    )
    expected = {row["model"]: row["stem"] for row in ghost_vs_dwpw_rows()}
    seen = {}
    for job in jobs:
        job_cfg = make_train_cfg(
            "experiment=ghost_vs_dwpw_cifar10",
            "data=cifar10",
            f"model={job['model']}",
            f"model.conv={job['model.conv']}",
        )
        conv = "conv" if job["model.conv"] == "standard" else job["model.conv"]
        seen[f"{job['model']}_{conv}"] = job_cfg.model.stem
        # document 003's recipe
        assert job_cfg.optimizer._target_ == "torch.optim.Adam" and job_cfg.optimizer.lr == 0.01
        assert job_cfg.optimizer.weight_decay == 0.0
        assert job_cfg.scheduler._target_.endswith(".constant")
        assert job_cfg.data.batch_size == 512 and job_cfg.data.name == "cifar10"
    assert seen == expected  # the nine rows, each with the stem the table names
    assert preset_file("ghost_vs_dwpw_cifar10").trainer.max_epochs == 50


def test_ghost_vs_dwpw_preset_stem_follows_the_data_for_other_models_and_yields_to_the_command_line(make_train_cfg):
    assert make_train_cfg("experiment=ghost_vs_dwpw_cifar10", "model=mobilenet_v2").model.stem == "cifar"
    assert (
        make_train_cfg("experiment=ghost_vs_dwpw_cifar10", "model=ghostnet", "model.stem=cifar").model.stem == "cifar"
    )


def test_ghost_vs_dwpw_preset_turns_augmentation_off(make_train_cfg):
    data_options = OmegaConf.load(CONF / "data" / "cifar10.yaml")
    if "flip" not in data_options or "crop_padding" not in data_options:
        pytest.skip(
            "conf/data/cifar10.yaml has no crop_padding/flip options yet: document 003's no-augmentation "
            "runs still crop and flip"
        )
    cfg = make_train_cfg("experiment=ghost_vs_dwpw_cifar10", "data=cifar10")
    assert cfg.data.flip is False and cfg.data.crop_padding == 0


def test_width_sweep_sweeps_widths_for_any_family(make_train_cfg):
    cfg = make_train_cfg("experiment=width_sweep", "model=mobilenet_v2")
    widths = [float(job["model.width"]) for job in sweep(cfg)]
    assert widths == [0.5, 0.75, 1.0, 1.5, 2.0]
    for family in ("ghostnet", "shufflenet_v2"):
        job_cfg = make_train_cfg("experiment=width_sweep", f"model={family}", "model.width=1.5")
        assert job_cfg.model.name == family and job_cfg.model.width == 1.5


def test_seeds_preset_is_the_sgd_cosine_recipe_on_shufflenet_v2_half_over_three_seeds(make_train_cfg):
    cfg = make_train_cfg("experiment=cifar10_seeds", "data=cifar10")
    recipe = make_train_cfg("experiment=cifar10_sgd_cosine", "data=cifar10")
    assert [int(job["seed"]) for job in sweep(cfg)] == [0, 1, 2]
    assert (cfg.model.name, cfg.model.width, cfg.data.name) == ("shufflenet_v2", 0.5, "cifar10")
    for group in ("optimizer", "scheduler"):
        assert resolved(cfg)[group] == resolved(recipe)[group]
    assert cfg.data.batch_size == recipe.data.batch_size == 128
    # the published figure the report's verdict is against
    published = [
        row
        for row in csv.DictReader(shipped_table("cifar10").read_text().splitlines())
        if row["model"] == "shufflenet_v2" and float(row["width"]) == 0.5
    ]
    assert [float(row["top1"]) for row in published] == [90.13]


def test_make_reproduce_seeds_trains_the_preset_and_reports_that_very_sweep():
    out = subprocess.run(
        ["make", "-n", "reproduce-seeds", "ARGS=data.root=/somewhere"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    train = next(line for line in out if "train.py" in line)
    report = next(line for line in out if "report.py" in line)
    sweep_dir = re.search(r"hydra\.sweep\.dir=(\S+)", train).group(1)
    assert "-m experiment=cifar10_seeds" in train and train.endswith("data.root=/somewhere")
    assert report.endswith(f"report.py {sweep_dir} --reference cifar10")
