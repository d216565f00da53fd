"""Lightning loggers as lnrepro configures them."""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only


def flatten(params: Mapping[str, Any], delimiter: str = ".", prefix: str = "") -> dict[str, Any]:
    """`{"model": {"width": 0.5}}` -> `{"model.width": 0.5}`; lists and scalars are kept as values."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{delimiter}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, delimiter, name))
        else:
            flat[name] = value
    return flat


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger with the run config flattened to dot-separated keys (`model.width`,
    `optimizer.lr`), the way Hydra overrides name them, so W&B's runs table, filters and sweeps address each
    value by the name the command line uses.

    The flattening is done here, in the one place hyperparameters go to W&B, rather than in the module (whose
    nested `hparams` are the run config that checkpoints carry for `eval.py`) or in a callback (Lightning logs
    the hyperparameters after `on_fit_start`, so a callback's flat copy would sit beside the nested one)."""

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        if isinstance(params, Namespace):
            params = vars(params)
        super().log_hyperparams(flatten(params or {}))
