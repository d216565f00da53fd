from __future__ import annotations

import logging
import re
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger("lnrepro")

# W&B's own ids are 8 lowercase letters and digits; users may set theirs. What W&B accepts without turning it into
# a path or a URL: letters, digits, `_` and `-`, at most 64 characters (W&B's limit on run ids).
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
        callbacks = (checkpoint or {}).get("callbacks")
        state = callbacks.get(cls.__qualname__) if isinstance(callbacks, dict) else None
        run_id = state.get("run_id") if isinstance(state, dict) else None
        if run_id is None or (isinstance(run_id, str) and RUN_ID.fullmatch(run_id)):
            return run_id or None
        # A checkpoint is data from whoever wrote it: an id W&B would take as a path, a URL or an object is not
        # used (W&B or the OS would end the run with a traceback); the run gets a new W&B run instead.
        log.warning(
            "the checkpoint's W&B run id %.80r is not one (letters, digits, _ and -, at most 64): logging to a new "
            "W&B run instead of continuing it",
            run_id,
        )
        return None
