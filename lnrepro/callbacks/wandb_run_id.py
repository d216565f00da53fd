from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger


class WandbRunId(pl.Callback):
    """Keeps a W&B logger's run id in the checkpoints (`callbacks` -> `WandbRunId` -> `run_id`, a plain string, so
    `torch.load(weights_only=True)` reads it), so a run resumed with `ckpt_path=` logs into the same W&B run.

    Lightning restores callback state only once `fit` has started, which is too late for a W&B run that may already
    have been created; the train task therefore reads the id from the checkpoint file itself (`run_id_in`) and hands
    it to the logger before training. `load_state_dict` keeps Lightning's own restore a no-op."""

    def __init__(self, logger: WandbLogger):
        self.logger = logger

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.logger.version}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    @classmethod
    def run_id_in(cls, checkpoint: dict[str, Any] | None) -> str | None:
        """The W&B run id a checkpoint written with this callback holds, else None."""
        state = ((checkpoint or {}).get("callbacks") or {}).get(cls.__qualname__) or {}
        return state.get("run_id") or None
