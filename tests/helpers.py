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


class RecordTrainIndices(pl.Callback):
    """Write which training images each process was served, per epoch: `<out_dir>/rank<global rank>.json` =
    {"world_size": W, "epochs": {"0": [dataset indices in the order served], ...}}.

    Wraps the training set's `__getitems__` (the DataLoader's fetcher calls it with the indices of one batch, after
    the distributed sampler chose them), so what is recorded is what the process trained on.
    """

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.epochs: dict[str, list[int]] = {}

    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        dataset = trainer.datamodule.train_set
        fetch = dataset.__getitems__

        def recording_fetch(indices):
            self.epochs.setdefault(str(trainer.current_epoch), []).extend(int(i) for i in indices)
            return fetch(indices)

        dataset.__getitems__ = recording_fetch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._write(trainer)  # after every batch: a job killed mid-epoch leaves what it trained on

    def on_train_end(self, trainer, pl_module):
        self._write(trainer)

    def _write(self, trainer):
        import json
        from pathlib import Path

        path = Path(self.out_dir) / f"rank{trainer.global_rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"world_size": trainer.world_size, "epochs": self.epochs}
        path.with_suffix(".tmp").write_text(json.dumps(record))
        path.with_suffix(".tmp").replace(path)


class SlowTraining(pl.Callback):
    """Sleep `seconds` after every training batch: a tiny job then trains long enough to be requeued in the middle
    (the numbers it computes do not change)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import time

        time.sleep(self.seconds)
