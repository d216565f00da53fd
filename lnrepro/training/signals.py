"""SIGTERM and SIGINT as clean stops: what a cluster's time limit, `docker stop`, Kubernetes and Ctrl+C send.

Without this, Lightning turns SIGTERM into a `SystemExit` with no status (a killed run exits 0, as if it had
finished) and Ctrl+C into `sys.exit(1)` wherever it lands. Here:

- While the network trains, a signal is only noted; `StopOnSignal` stops at the next clean point, the end of a
  training step (or of the epoch, after its validation and checkpoints), and saves `last.ckpt` there first: the
  same kind of checkpoint, written at the same hook, as `callbacks.last_checkpoint.every_n_train_steps`, with the
  data loader's position, so the resumed run trains on exactly as the uninterrupted one would have.
- Anywhere else (setup, testing, the end-of-fit profile, `lnrepro-eval`, `lnrepro-profile`) there is nothing to
  save: the task stops at once.

SIGUSR2 is submitit's notice in a SLURM job (`signal_delay_s` before the time limit, or on preemption): its handler
requeues the job and exits at once, wherever training is. While the network trains, that handler is called only
at the end of the step, after `last.ckpt` is saved there, so the requeued job loses nothing.

Either way `RunInterrupted` carries one line to the entry point, which exits 128 + the signal number (143 for
SIGTERM, 130 for SIGINT), as a shell reports a process killed by that signal. A second Ctrl+C while the first waits
for the end of a step stops at once. Files are never half-written: checkpoints and metrics.json are written to a
temporary file and renamed (`lnrepro.utils.files.atomic_writer`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint

from lnrepro.errors import RunInterrupted
from lnrepro.training.checkpoint_io import on_last_batch_of_epoch

log = logging.getLogger("lnrepro")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# submitit's preemption and time-limit notice (its SUBMITIT_PREEMPT_SIGNAL, USR2 unless set otherwise)
REQUEUE_SIGNAL = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)


class _SignalState:
    """The signal this process received (None: none yet) and whether the current phase can stop at a clean point
    (training) or stops at once (everything else)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferring = False
        self.phase = "setup"
        self.nothing_saved = "nothing was saved"
        self.requeue_handler = None  # submitit's, where it installed one
        self.requeue_pending = False

    def handle_requeue(self, number: int, frame) -> None:
        if self.deferring:
            self.requeue_pending = True
            log.warning(
                "%s received (the job's time limit is near, or it is preempted): saving a checkpoint at the end of "
                "this step, then submitit requeues the job",
                signal.Signals(number).name,
            )
            return
        self.requeue_handler(number, frame)

    def requeue_now(self) -> None:
        """Call submitit's handler that was held back: it requeues the job and exits (on the first process)."""
        self.requeue_pending = False
        self.requeue_handler(REQUEUE_SIGNAL, None)

    def handle(self, number: int, frame) -> None:
        name = signal.Signals(number).name
        if self.deferring and self.received is None:
            self.received = number
            # logging takes a re-entrant lock: safe from a handler that runs in the main thread between bytecodes
            log.warning("%s received: stopping after this training step, with a checkpoint", name)
            return
        self.received = self.received or number
        raise RunInterrupted(number, f"stopped by {name} during {self.phase}; {self.nothing_saved}")


state = _SignalState()


def _install() -> None:
    if threading.current_thread() is threading.main_thread():
        for number in STOP_SIGNALS:
            signal.signal(number, state.handle)
        if state.requeue_handler is not None:
            signal.signal(REQUEUE_SIGNAL, state.handle_requeue)


@contextlib.contextmanager
def stop_cleanly(phase: str, nothing_saved: str = "nothing was saved: run the same command again") -> Iterator[None]:
    """Handle SIGTERM and SIGINT while a task runs (main thread only: elsewhere Python does not deliver them);
    `phase` and `nothing_saved` make the line a signal outside training prints."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in (*STOP_SIGNALS, REQUEUE_SIGNAL)}
    state.received, state.deferring, state.phase, state.nothing_saved = None, False, phase, nothing_saved
    state.requeue_pending = False
    state.requeue_handler = previous[REQUEUE_SIGNAL] if callable(previous[REQUEUE_SIGNAL]) else None
    _install()
    try:
        yield
    finally:
        for number, handler in previous.items():
            if handler is not None:  # None: a handler installed outside Python, which cannot be put back
                signal.signal(number, handler)
        state.deferring = False


def set_phase(phase: str, nothing_saved: str | None = None) -> None:
    """What the task is doing now, for the line a signal prints; `nothing_saved`: what the user does then."""
    state.phase = phase
    if nothing_saved is not None:
        state.nothing_saved = nothing_saved


def resume_command(checkpoint: str | Path) -> str:
    """The command line that continues this run from `checkpoint`: the program and this job's overrides (without
    any `ckpt_path=`), plus `ckpt_path=<checkpoint>`."""
    from lnrepro.tasks.common import hydra_config

    program = Path(sys.argv[0]).name
    program = f"python {program}" if program.endswith(".py") else program
    hydra_cfg = hydra_config()
    overrides = list(hydra_cfg.overrides.task) if hydra_cfg is not None else []
    kept = [item for item in overrides if not item.lstrip("+~").startswith("ckpt_path=")]
    return " ".join([program, *map(shlex.quote, kept), shlex.quote(f"ckpt_path={checkpoint}")])


def raise_if_received(trainer: pl.Trainer, checkpoint: str | Path | None, where: str) -> None:
    """Stop here when a signal has come (at a step's or epoch's end, or after the fit, for one that came after the
    last epoch's end): `checkpoint` is the run's newest, already written."""
    if state.received is None:
        return
    name = signal.Signals(state.received).name
    if checkpoint and Path(checkpoint).is_file():
        saved = f"checkpoint {checkpoint}; resume: {resume_command(checkpoint)}"
    else:
        saved = "no checkpoint was written yet: run the same command again"
    raise RunInterrupted(
        state.received,
        f"stopped by {name} {where} (epoch {trainer.current_epoch}, step {trainer.global_step}); {saved}",
    )


class StopOnSignal(Checkpoint):
    """Stops training at the end of the step (or epoch) during which SIGTERM or SIGINT came, after saving
    `last.ckpt` at `checkpoint_path`; raises `RunInterrupted` naming it and the command that resumes.

    A `Checkpoint` callback, so that Lightning runs it after the ModelCheckpoints (it moves checkpoint callbacks to
    the end, in their order, and calls them after the others at an epoch's end): the checkpoint saved here holds
    their record of the epoch's best, as an uninterrupted run's would. Under DDP every process stops at the same
    step: whether any process received a signal is decided together (one small all-reduce per step, only when
    there are several processes).
    """

    def __init__(self, checkpoint_path: str | Path):
        self.checkpoint_path = Path(checkpoint_path)
        # what code reading `trainer.checkpoint_callbacks` expects of each (StopOnNonFiniteLoss names the newest)
        self.best_model_path = ""
        self.last_model_path = ""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning installed its own SIGTERM handler as fit began (it raises a status-less SystemExit from inside
        # validation, and kills launched processes): ours replaces it for the fit; Lightning restores ours after.
        _install()
        state.deferring = True
        set_phase("training")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state.deferring = False
        set_phase("the end of training")

    def _stop_requested(self, trainer: pl.Trainer) -> bool:
        received = state.received is not None or state.requeue_pending
        if trainer.world_size > 1:
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        return received

    def _save_and_stop(self, trainer: pl.Trainer, where: str) -> None:
        state.deferring = False  # a second signal while saving stops at once; the write is atomic
        # a save, not a load: weights_only=False keeps the optimizer and loop states a resume needs (our own file)
        trainer.save_checkpoint(self.checkpoint_path, weights_only=False)
        self.last_model_path = str(self.checkpoint_path)
        if state.requeue_pending and state.received is None:
            log.info("saved %s for the requeued job", self.checkpoint_path)
            state.requeue_now()
            # Only the first process's handler requeues and exits; the others go on until SLURM stops the job
            # (exiting first could end the job step before the requeue).
            state.deferring = True
            return
        if state.received is None:  # another process received it
            state.received = signal.SIGTERM
        raise_if_received(trainer, self.checkpoint_path, where)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int):
        if on_last_batch_of_epoch(trainer):  # validation comes first: the epoch's end stops (see there)
            return
        if self._stop_requested(trainer):
            self._save_and_stop(trainer, "during training")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A signal during validation: it ends, the ModelCheckpoints record the epoch (they run before this), then
        # the run stops with their record in its checkpoint.
        if self._stop_requested(trainer):
            self._save_and_stop(trainer, "at the end of an epoch")
