"""Every option of every config group composes, and what it names can be built."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lnrepro.models import list_models
from tests.conftest import CONF


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def test_model_group_has_every_registered_family():
    assert set(options("model")) == set(list_models())


@pytest.mark.parametrize("family", options("model"))
def test_model_configs_build_their_network(make_train_cfg, family):
    cfg = make_train_cfg(f"model={family}", "model.width=0.5")
    assert cfg.model.name == family
    assert cfg.model.num_classes == cfg.data.num_classes  # follows the data
    assert cfg.model.stem == "cifar"
    net = instantiate(cfg.model)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("data", options("data"))
def test_data_configs_compose_and_set_the_stem(make_train_cfg, data):
    cfg = make_train_cfg(f"data={data}")
    assert cfg.model.stem == cfg.data.stem == ("imagenet" if data == "imagenet" else "cifar")
    assert cfg.model.num_classes == cfg.data.num_classes


@pytest.mark.parametrize("data", options("data"))
def test_every_data_config_shuffles_with_the_run_seed(make_train_cfg, data):
    cfg = make_train_cfg(f"data={data}", "seed=123")
    assert cfg.data.shuffle_seed == 123


@pytest.mark.parametrize("optimizer", options("optimizer"))
def test_optimizer_configs_make_optimizers(make_train_cfg, optimizer):
    cfg = make_train_cfg(f"optimizer={optimizer}")
    factory = instantiate(cfg.optimizer)
    params = [torch.nn.Parameter(torch.randn(3))]
    made = factory(params=params)
    assert isinstance(made, torch.optim.Optimizer)
    assert made.param_groups[0]["lr"] == cfg.optimizer.lr


def test_rmsprop_is_tensorflow_style(make_train_cfg):
    cfg = make_train_cfg("optimizer=rmsprop")
    assert type(instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])).__name__ == "RMSpropTF"


@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_scheduler_configs_make_lightning_scheduler_dicts(make_train_cfg, scheduler):
    cfg = make_train_cfg(f"scheduler={scheduler}")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    made = instantiate(cfg.scheduler)(optimizer, steps_per_epoch=10, max_epochs=200)
    assert made["interval"] in ("step", "epoch")
    for _ in range(3):
        optimizer.step()
        made["scheduler"].step()
    assert optimizer.param_groups[0]["lr"] <= 0.1


def test_cosine_warms_up_linearly_then_decays_to_min_lr():
    from lnrepro.training.schedulers import cosine_with_warmup

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    made = cosine_with_warmup(
        optimizer, steps_per_epoch=10, max_epochs=5, warmup_epochs=1, warmup_start_factor=0.1, min_lr=0.01
    )
    lrs = []
    for _ in range(50):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        made["scheduler"].step()
    assert lrs[0] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # warm-up rises
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # cosine falls
    assert lrs[-1] == pytest.approx(0.01, abs=2e-3)


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_configs_build_a_trainer(make_train_cfg, trainer, tmp_path):
    cfg = make_train_cfg(f"trainer={trainer}", "trainer.accelerator=cpu")
    if trainer == "gpu":
        pytest.skip("the gpu trainer config needs a GPU") if not torch.cuda.is_available() else None
    made = instantiate(cfg.trainer, logger=False)
    assert made.max_epochs == cfg.trainer.max_epochs
    if trainer == "ddp":
        assert type(made.strategy).__name__ == "DDPStrategy"


@pytest.mark.parametrize("logger", options("logger"))
def test_logger_configs_build_loggers(make_train_cfg, logger):
    from lnrepro.tasks.instantiate import instantiate_loggers

    cfg = make_train_cfg(f"logger={logger}")
    loggers = instantiate_loggers(cfg.logger)
    expected = {"csv": 1, "tensorboard": 1, "wandb": 1, "many": 3, "none": 0}[logger]
    assert len(loggers) == expected


@pytest.mark.parametrize("callbacks", options("callbacks"))
def test_callback_configs_build_callbacks(make_train_cfg, callbacks):
    from lnrepro.tasks.instantiate import instantiate_callbacks

    cfg = make_train_cfg(f"callbacks={callbacks}")
    made = instantiate_callbacks(cfg.callbacks)
    assert len(made) == len([c for c in cfg.callbacks.values() if c and "_target_" in c])


@pytest.mark.parametrize("group", ["experiment", "debug", "hparams_search"])
def test_presets_compose(make_train_cfg, group):
    for option in options(group):
        cfg = make_train_cfg(f"{group}={option}")
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_cifar10_recipe_preset_sets_the_recipe(make_train_cfg):
    cfg = make_train_cfg("experiment=cifar10_sgd_cosine")
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.nesterov
    assert cfg.optimizer.weight_decay == 5e-4 and cfg.scheduler._target_.endswith("cosine_with_warmup")
    assert "sgd_cosine" in cfg.tags


def test_optuna_search_uses_the_optuna_sweeper(make_train_cfg):
    cfg = make_train_cfg("hparams_search=optuna")
    assert "optuna" in cfg.hydra.sweeper._target_.lower()
    assert cfg.optimized_metric == "val/acc_best"


def test_eval_config_composes(make_eval_cfg):
    cfg = make_eval_cfg("ckpt_path=/some/last.ckpt")
    assert cfg.ckpt_path == "/some/last.ckpt"


def test_a_multirun_is_one_wandb_group(make_train_cfg):
    from lnrepro.tasks.instantiate import instantiate_loggers

    cfg = make_train_cfg("logger=wandb", "tags=[a,b]")
    (logger,) = instantiate_loggers(cfg.logger, multirun_group="train/2026-01-01_00-00-00")
    assert logger._wandb_init["group"] == "train/2026-01-01_00-00-00"
    assert logger._wandb_init["project"] == "lnrepro" and list(logger._wandb_init["tags"]) == ["a", "b"]
    (single,) = instantiate_loggers(make_train_cfg("logger=wandb").logger, multirun_group=None)
    assert single._wandb_init.get("group") is None


@pytest.mark.parametrize(
    "overrides, conv, groups",
    [
        (["model=ghostnet"], "ghost", None),
        (["model=vgg16"], "standard", None),
        (["model=vgg16", "model.conv=dwpw"], "dwpw", None),
        (["model=shufflenet_v1"], None, 3),
        (["model=shufflenet_v1", "model.groups=8"], None, 8),
        (["model=mobilenet_v2"], None, None),
    ],
)
def test_a_run_records_the_options_its_family_resolved(make_train_cfg, overrides, conv, groups):
    """The model configs leave conv and groups null (the family's default); metrics.json records what was built,
    which is what reports match published rows by (`ghostnet_ghost`, ShuffleNet V1 g=3)."""
    from lnrepro.tasks.common import run_facts

    cfg = make_train_cfg(*overrides)
    assert cfg.model.get("conv") is None or "model.conv" in " ".join(overrides)
    facts = run_facts(cfg)
    assert (facts["conv"], facts["groups"]) == (conv, groups)
    assert facts["model"] == cfg.model.name and facts["width"] == 1.0
    assert isinstance(facts["model/dropout"], float)  # the family's own default, resolved


def test_a_run_records_its_family_options():
    """Every resolved option beyond the named facts is `model/<option>`: what an ablation table's rows match."""
    from lnrepro.tasks.common import run_facts
    from tests.conftest import compose_config

    cfg = compose_config("train", Path("unused"), ["model=mobilenet_v1", "+model.activation=relu6", "data=synthetic"])
    facts = run_facts(cfg)
    assert facts["model/activation"] == "relu6" and facts["model/dropout"] == 0.0
    assert "model/num_classes" not in facts and "model/name" not in facts
