"""Lightning loggers as lnrepro configures them, and `publish`: figures measured outside Lightning's logging (the
efficiency profile, the deployment runtimes) sent to every logger of a trainer."""

from __future__ import annotations

import logging
import os
import secrets
import string
import time
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

if TYPE_CHECKING:
    import lightning.pytorch as pl

log = logging.getLogger(__name__)

OFFLINE_MODES = ("offline", "dryrun", "disabled")


def wandb_loggers(trainer: pl.Trainer) -> list[_LightningWandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, _LightningWandbLogger)]


def publish(trainer: pl.Trainer, values: dict[str, Any], save: bool = False) -> None:
    """Send `values` to every logger: numbers through `log_metrics` at the current step; W&B's summary gets
    everything (its summary is what a W&B table of runs shows). Rank 0 only. `save`: write the loggers' files
    now (after the fit, when Lightning no longer does)."""
    if not trainer.is_global_zero:
        return
    numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers:
        for logger in trainer.loggers:
            logger.log_metrics(numbers, step=trainer.global_step)
    for logger in wandb_loggers(trainer):
        logger.experiment.summary.update(values)
    if save:
        for logger in trainer.loggers:
            logger.save()


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


def new_run_id() -> str:
    """A W&B run id of the form wandb itself makes (8 characters of [a-z0-9])."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def _forget_unreachable_server() -> None:
    """wandb 0.31 reports the failed `wandb.init` to its own analytics endpoint on the same server, at exit, with
    a 10 s timeout per request: 10-20 s more at exit when the server accepts connections and never answers. Marking
    the server as one without that endpoint (what its probe would conclude) drops the report. The reporter is a
    local of `wandb.init`, hence the search; internals of wandb 0.31, so on another version this does nothing."""
    try:
        import gc

        from wandb.analytics.opentelemetry.opentelemetry_proxy import OpenTelemetryProxy

        for proxy in gc.get_objects():
            if type(proxy) is OpenTelemetryProxy and getattr(proxy, "_server_supports_proxy", False) is None:
                proxy._server_supports_proxy = False
    except Exception:  # analytics only; never worth failing the run for
        pass


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger with the run config flattened to dot-separated keys (`model.width`,
    `optimizer.lr`), the way Hydra overrides name them, so W&B's runs table, filters and sweeps address each
    value by the name the command line uses.

    The flattening is done here, in the one place hyperparameters go to W&B, rather than in the module (whose
    nested `hparams` are the run config that checkpoints carry for `eval.py`) or in a callback (Lightning logs
    the hyperparameters after `on_fit_start`, so a callback's flat copy would sit beside the nested one).

    W&B never costs the run: online, `wandb.init` gives up after `init_timeout` seconds (wandb's own default is
    90 s, and an unreachable server otherwise ends the run with a CommError before training), and the same run
    (same id) is then started offline, to be uploaded later with `wandb sync`. The id is therefore chosen here,
    before W&B starts, unless the config or a resumed checkpoint (`WandbRunId`) names one."""

    def __init__(self, *args: Any, init_timeout: float | None = 15.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self._wandb_init.get("id"):
            self._id = self._wandb_init["id"] = new_run_id()
        if init_timeout is not None:
            settings = self._wandb_init.get("settings")
            if settings is None or isinstance(settings, Mapping):
                self._wandb_init["settings"] = {**(settings or {}), "init_timeout": float(init_timeout)}
            else:  # a wandb.Settings
                settings.init_timeout = float(init_timeout)

    def resume(self, run_id: str) -> None:
        """Continue W&B run `run_id` (a resumed checkpoint's): called before W&B starts, i.e. before fit."""
        if self._experiment is not None:
            raise RuntimeError("the W&B run has already started; resume it before training starts")
        self._id = self._wandb_init["id"] = run_id

    def _online(self) -> bool:
        mode = self._wandb_init.get("mode") or os.environ.get("WANDB_MODE") or "online"
        return not self._offline and mode not in OFFLINE_MODES

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is not None or not self._online():
            return _LightningWandbLogger.experiment.fget(self)
        import wandb

        start = time.monotonic()
        try:
            return _LightningWandbLogger.experiment.fget(self)
        except (wandb.errors.Error, TimeoutError) as error:
            waited = time.monotonic() - start
            # The failed attempt still holds the run id in W&B's service process ("run ID is in use"): end it. A
            # service inherited through WANDB_SERVICE (a parent process that used W&B, such as a test runner or a
            # notebook) would outlive teardown: this process starts its own.
            os.environ.pop("WANDB_SERVICE", None)
            wandb.teardown()
            _forget_unreachable_server()
            self._wandb_init["mode"] = "offline"  # not `self._offline`: Lightning would set WANDB_MODE for the process
            run = self._start_offline(wandb)
            log.warning(
                "W&B could not start online (%s; after %.0f s): run %s goes on offline; upload it later with "
                "`wandb sync %s`",
                _first_line(error),
                waited,
                run.id,
                Path(run.dir).parent,
            )
            return run

    def _start_offline(self, wandb, tries: int = 6):
        """The same run offline. On a busy machine W&B's service may still hold the failed attempt's run id for a
        few seconds after `teardown` ("run ID is in use"): try again, a bounded number of times."""
        for attempt in range(tries):
            try:
                return _LightningWandbLogger.experiment.fget(self)
            except Exception as error:  # wandb.errors.Error, or the service's ServerResponseError
                if "in use" not in str(error) or attempt == tries - 1:
                    raise
                wandb.teardown()
                time.sleep(0.5 * (attempt + 1))

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        if isinstance(params, Namespace):
            params = vars(params)
        super().log_hyperparams(flatten(params or {}))
