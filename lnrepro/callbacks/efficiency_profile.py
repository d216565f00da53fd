"""Efficiency figures of every training run: static counts, training/validation speed, and at the end latency,
throughput and peak memory, sent to every logger and kept in `self.metrics` for metrics.json."""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lnrepro import schema
from lnrepro.loggers import publish, wandb_loggers
from lnrepro.profiling import ProfileSettings, count_macs, measured_metrics, static_metrics, synchronize
from lnrepro.profiling.context import input_shape, shape_text
from lnrepro.profiling.measure import LAYER_COLUMNS, layer_rows
from lnrepro.profiling.memory import MIB

log = logging.getLogger(__name__)


class EfficiencyProfile(pl.Callback):
    """Measures the network while it trains, without slowing it down.

    - At fit start: parameters, multiply-adds, FLOPs (= 2 x multiply-adds) and memory access cost for one image
      of `image_size` (None: the size of the first training batch), on the network (`pl_module.net` when the
      module has one), in eval mode under no_grad, train mode restored.
    - Every epoch: training time (wall clock of the epoch minus its validation; Lightning runs checkpoint
      callbacks after all others, so a checkpoint saved as validation ends counts as training time and one
      saved as the epoch ends, like `last.ckpt`, falls outside it), images/s, and validation time. Timers read
      `time.perf_counter()` after synchronising the device at epoch and validation boundaries only; images are
      counted from the batch shape in `on_train_batch_end`, which needs no synchronisation. The first
      `warmup_steps` steps of epoch 0 (allocator growth, kernel selection) are left out of images/s, and
      `train/epoch_s` is the median over epochs, leaving out epoch 0 when there are others. Under DDP, images/s
      is rank 0's rate times the world size.
    - At the end of training (`profile.end_of_fit`): peak memory as the `profile` config group asks for, measured by
      `lnrepro.profiling.measured_metrics` exactly as `lnrepro-profile` measures it, on the trained network itself
      (no copy), in eval mode under no_grad, train mode restored; the fit measured its own training speed. On a
      GPU `memory/peak_mib` is `torch.cuda.max_memory_allocated` over the whole fit; on the CPU, one measured
      training step. Latency and throughput per runtime come after testing, from the train task.

    Final values are in `self.metrics` (keys: `lnrepro.schema`) and go to every logger's `log_metrics` (numbers
    only) and, for W&B, to the run summary (with the context strings). A W&B run also gets, at fit start, a
    Table `profile/layers` of the per-layer breakdown (`lnrepro.profiling.measure.LAYER_COLUMNS`: layer, type,
    multiply-adds, FLOPs, parameters, output shape, memory access bytes), from the same count as the totals.
    """

    TABLE_KEY = "profile/layers"

    def __init__(
        self,
        image_size: int | list[int] | None = None,
        warmup_steps: int = 10,
        profile: ProfileSettings | dict[str, Any] | None = None,
    ) -> None:
        """`profile`: the `profile` config group (what the end of fit measures), as settings or a dict."""
        self.image_size = list(image_size) if isinstance(image_size, (list, tuple)) else image_size
        self.warmup_steps = warmup_steps
        self.settings = profile if isinstance(profile, ProfileSettings) else ProfileSettings.from_config(profile)
        self.metrics: dict[str, float | int | str] = {}
        self._reset_timers()

    def _reset_timers(self) -> None:
        self._input_shape: tuple[int, ...] | None = None
        self._epoch_start: float | None = None  # None: this epoch's start was not seen
        self._val_start = 0.0
        self._val_seconds_in_epoch = 0.0
        self._epoch_seconds: list[float] = []
        self._val_seconds: list[float] = []
        self._images = 0  # images counted after warm-up
        self._counted_seconds = 0.0  # training seconds after warm-up
        self._count_from: float | None = None  # clock time from which this epoch's images are counted
        self._images_in_epoch = 0

    # ---------------------------------------------------------------------------------------------------------
    @staticmethod
    def network(pl_module: pl.LightningModule) -> nn.Module:
        return getattr(pl_module, "net", pl_module)

    # ---------------------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_timers()
        self.metrics = {}
        if self.image_size is not None:
            self._count_static(trainer, pl_module, self.image_size)
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def _count_static(self, trainer: pl.Trainer, pl_module: pl.LightningModule, input_size) -> None:
        self._input_shape = input_shape(input_size)
        net = self.network(pl_module)
        to_wandb = wandb_loggers(trainer) if trainer.is_global_zero else []
        macs = count_macs(net, self._input_shape) if to_wandb else None  # counted once, for both
        counts = static_metrics(net, self._input_shape, macs=macs)
        self.metrics.update(counts)
        publish(trainer, counts)
        if macs is not None:
            rows = layer_rows(macs)
            for logger in to_wandb:
                logger.log_table(self.TABLE_KEY, columns=LAYER_COLUMNS, data=rows, step=trainer.global_step)
        log.info(
            "%s: %.3fM params, %.1fM multiply-adds (%.1fM FLOPs) per %s image",
            type(self.network(pl_module)).__name__,
            counts[schema.PARAMS] / 1e6,
            counts[schema.MACS] / 1e6,
            counts[schema.FLOPS] / 1e6,
            shape_text(self._input_shape),
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(pl_module.device)
        self._epoch_start = time.perf_counter()
        self._val_seconds_in_epoch = 0.0
        # After epoch 0 every step counts.
        self._count_from = None if trainer.current_epoch == 0 and self.warmup_steps > 0 else self._epoch_start
        self._images_in_epoch = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._input_shape is None:  # no image_size configured: count on the first batch's image size
            self._count_static(trainer, pl_module, list(batch[0].shape[1:]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        batch_size = len(batch[0])
        if self._count_from is None:
            if batch_idx + 1 >= self.warmup_steps:  # the last warm-up step is done: start counting (one sync)
                synchronize(pl_module.device)
                self._count_from = time.perf_counter()
        else:
            self._images_in_epoch += batch_size

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            synchronize(pl_module.device)
            self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        synchronize(pl_module.device)
        seconds = time.perf_counter() - self._val_start
        self._val_seconds.append(seconds)
        self._val_seconds_in_epoch += seconds

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning runs the epoch's validation before this hook: its time is taken out.
        synchronize(pl_module.device)
        now = time.perf_counter()
        if self._epoch_start is None:  # resumed mid-epoch: Lightning skipped the start, the epoch has no clock
            return
        self._epoch_seconds.append(now - self._epoch_start - self._val_seconds_in_epoch)
        self._epoch_start = None
        if self._count_from is not None and self._images_in_epoch:
            self._images += self._images_in_epoch
            self._counted_seconds += now - self._count_from - self._val_seconds_in_epoch
        publish(trainer, self._update_speed(trainer))

    def _update_speed(self, trainer: pl.Trainer) -> dict[str, float]:
        """Recompute the speed figures into `self.metrics`; returns them."""
        epochs = self._epoch_seconds[1:] or self._epoch_seconds
        speed = {schema.TRAIN_EPOCH_S: statistics.median(epochs)}
        if self._val_seconds:
            speed[schema.VAL_EPOCH_S] = statistics.median(self._val_seconds)
        if self._images and self._counted_seconds > 0:
            speed[schema.TRAIN_IMGS_PER_S] = self._images / self._counted_seconds * trainer.world_size
        self.metrics.update(speed)
        return speed

    # ---------------------------------------------------------------------------------------------------------
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = self.network(pl_module)
        shape = self._input_shape or (3, 32, 32)
        on_gpu = pl_module.device.type == "cuda"
        fit_peak = torch.cuda.max_memory_allocated(pl_module.device) / MIB if on_gpu else None  # before anything runs
        if self.settings.end_of_fit and trainer.is_global_zero:
            # On a GPU the fit's own peak is the training figure: no extra training step is measured. Latency per
            # runtime is the train task's, after testing, where it also gets each runtime's test accuracy.
            settings = dataclasses.replace(self.settings, train=self.settings.train and not on_gpu, runtimes=[])
            self.metrics.update(measured_metrics(net, shape, settings, training_speed=False))
        if fit_peak is not None and self.settings.memory:
            self.metrics[schema.MEMORY_PEAK_MIB] = fit_peak
        publish(trainer, self.metrics)
