"""Rebuild a finished run from its checkpoint: `net, config = lnrepro.load_run("…/checkpoints/last.ckpt")`.

A checkpoint is data from whoever wrote it, so nothing it names is called. `load_run` reads only plain values
(numbers, strings, booleans, lists of them) from the run config stored in the checkpoint: the model family and its
options, the data config's name and values, the seed. It composes everything else from the package's own config
groups (`pkg://lnrepro.conf`) and builds the network with `lnrepro.models.build_model` itself. A stored value that
is not a known family, option or data setting, or a stored `_target_` other than the package's own, is refused
with one line (`UserInputError`), before anything is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from lnrepro.errors import UserInputError
from lnrepro.models import build_model, list_models
from lnrepro.models.registry import model_options
from lnrepro.utils.checkpoint import check_matches, load_checkpoint, network_weights

#: Top-level stored values that are read besides `model` and `data`.
STORED_SCALARS = ("seed",)


class LoadedRun(NamedTuple):
    net: nn.Module  # in eval mode, with the checkpoint's weights
    config: Any  # DictConfig: the package's train config with the run's stored model, data and seed


def _is_plain(value: Any) -> bool:
    if isinstance(value, str):
        # `${...}` would become an OmegaConf interpolation once merged: `${oc.create:{_target_: ...}}` is code, and
        # `${oc.env:...}` reads the environment. Runs store their values resolved, so a real checkpoint has none.
        return "${" not in value
    if value is None or isinstance(value, (bool, int, float)):
        return True
    return isinstance(value, list) and all(_is_plain(item) for item in value)


def _plain_values(
    stored: Any, section: str, path: str | Path, allowed: set[str], expected_target: str | None
) -> dict[str, Any]:
    """The stored `section` (model or data) as plain values, each a key the package's config knows."""
    if not isinstance(stored, Mapping):
        raise UserInputError(
            f"checkpoint {path} holds no lnrepro run config ({section} is missing): was it written by lnrepro-train?"
        )
    values: dict[str, Any] = {}
    for key, value in stored.items():
        if key == "_target_":
            if value != expected_target:
                raise UserInputError(
                    f"checkpoint {path} names {section}._target_={value!r}, which is not lnrepro's "
                    f"({expected_target}); lnrepro rebuilds runs only from its own configs and calls nothing a "
                    f"checkpoint names"
                )
            continue
        if not isinstance(key, str) or key.startswith("_") or key not in allowed:
            raise UserInputError(
                f"checkpoint {path} stores {section}.{key}, which lnrepro's {section} config does not "
                f"have (known: {', '.join(sorted(allowed))})"
            )
        if not _is_plain(value):
            raise UserInputError(
                f"checkpoint {path} stores {section}.{key} as a {type(value).__name__} that is not a "
                f"plain value; only numbers, strings without `${{`, booleans and lists of them "
                f"are read"
            )
        values[key] = value
    return values


def data_config_names() -> list[str]:
    """The data configs shipped in the package (`data=<name>`): conf/data/<name>.yaml."""
    from importlib.resources import files

    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in files("lnrepro.conf").joinpath("data").iterdir()
        if entry.name.endswith(".yaml")
    )


def _compose(model: str, data: str) -> Any:
    """The package's train config with `model=<model> data=<data>`, inside or outside a running Hydra app."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides = [f"model={model}", f"data={data}"]
    if GlobalHydra.instance().is_initialized():  # inside lnrepro-eval: its search path holds the package's configs
        return compose(config_name="train", overrides=overrides)
    with initialize_config_module(config_module="lnrepro.conf", version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def load_run(ckpt_path: str | Path, overrides: Mapping[str, Any] | None = None, trusted: bool = False) -> LoadedRun:
    """The network of the run that wrote `ckpt_path` (eval mode, its weights) and that run's config.

    `overrides`: {"data.root": "...", ...} applied after the stored values (what `lnrepro-eval` takes from its
    command line). `trusted`: unpickle the file fully (`weights_only=False`), for a checkpoint you trust that
    holds more than tensors and plain containers; its stored values are still only read, never called.
    """
    from omegaconf import OmegaConf, open_dict

    checkpoint = load_checkpoint(ckpt_path, trusted=trusted)
    stored = checkpoint.get("hyper_parameters") or {}
    if not isinstance(stored, Mapping) or not isinstance(stored.get("model"), Mapping):
        raise UserInputError(f"checkpoint {ckpt_path} holds no lnrepro run config: was it written by lnrepro-train?")

    name = stored["model"].get("name")
    if name not in list_models():
        raise UserInputError(
            f"checkpoint {ckpt_path} names model {name!r}, which is not an lnrepro family; "
            f"known: {', '.join(list_models())}"
        )
    data_name = (stored.get("data") or {}).get("name") if isinstance(stored.get("data"), Mapping) else None
    if data_name not in data_config_names():
        raise UserInputError(
            f"checkpoint {ckpt_path} names data {data_name!r}, which is not one of lnrepro's data "
            f"configs ({', '.join(data_config_names())})"
        )

    config = _compose(name, data_name)
    model_values = _plain_values(
        stored["model"],
        "model",
        ckpt_path,
        set(config.model) | set(model_options(name)),
        expected_target=config.model._target_,
    )
    data_values = _plain_values(
        stored["data"], "data", ckpt_path, set(config.data), expected_target=config.data._target_
    )
    with open_dict(config):
        config.model.merge_with(model_values)
        config.data.merge_with(data_values)
        for key in STORED_SCALARS:
            if _is_plain(stored.get(key)) and key in stored:
                config[key] = stored[key]
        for key, value in (overrides or {}).items():
            OmegaConf.update(config, key, value, merge=False, force_add=True)
        config.model.pretrained = None  # the weights come from the checkpoint, not from a file that may be gone
        run_dir = Path(ckpt_path).resolve().parent.parent  # <run>/checkpoints/x.ckpt
        config.paths.output_dir = str(run_dir)

    arguments = OmegaConf.to_container(config.model, resolve=True)
    arguments.pop("_target_", None)
    net = build_model(**arguments)
    weights = network_weights(checkpoint["state_dict"])
    check_matches(weights, net, ckpt_path)
    net.load_state_dict(weights)
    return LoadedRun(net.eval(), config)
