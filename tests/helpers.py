"""Callbacks that simulate failures, injected through `+callbacks.<name>._target_=tests.helpers...`."""

import lightning.pytorch as pl
import torch


class CrashAtEpoch(pl.Callback):
    """Raise as epoch `epoch` starts, as if the process had been killed after saving the previous epoch."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"simulated crash at epoch {self.epoch}")


class PoisonWeightsAtEpoch(pl.Callback):
    """Fill the weights with NaN as epoch `epoch` starts, so its first loss is NaN."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.fill_(float("nan"))
