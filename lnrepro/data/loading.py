"""What every data module shares: batch-size checks, a resumable shuffle, and the three DataLoaders."""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lnrepro.errors import UserInputError


def check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise UserInputError(f"data.batch_size must be a positive integer (got {batch_size!r})")
    return batch_size


class EpochShuffleSampler(Sampler[int]):
    """A shuffle that is a function of (seed, epoch) alone.

    torch's RandomSampler draws from the global RNG when iteration starts; on a resumed run Lightning starts that
    iterator before any epoch-start hook can re-seed, so the resumed epoch would see another order. Lightning calls
    `set_epoch` before each epoch (and wraps this sampler for DDP).
    """

    def __init__(self, length: int, seed: int = 0):
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())


class LoaderPosition:
    """Where a training loader is: the epoch of its current pass and the batches handed out in it; and, after a
    checkpoint is loaded, where the next pass of that epoch should start. One object shared by the loader and its
    data module, so it survives Lightning re-creating the loader (a DistributedSampler under DDP)."""

    def __init__(self):
        self.epoch: int | None = None
        self.batches = 0
        self.resume_at: tuple[int | None, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resume_at = (state["epoch"], state["batches"])

    def start(self, epoch: int | None) -> int:
        """Begin a pass of `epoch`; returns how many batches to leave out (those a checkpoint of it saw)."""
        resume, self.resume_at = self.resume_at, None
        self.epoch, self.batches = epoch, resume[1] if resume is not None and resume[0] == epoch else 0
        return self.batches


class _SkipFirst:
    """The loader's batch sampler with the first `loader.skip` batches of the next pass left out, as index lists
    (nothing is loaded for them). Read at each pass, so persistent workers see it too."""

    def __init__(self, batches, loader: ResumableDataLoader):
        self.batches = batches
        self.loader = loader

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        skip, self.loader.skip = self.loader.skip, 0
        return itertools.islice(iter(self.batches), skip, None)


@contextlib.contextmanager
def ctrl_c_blocked_in_new_workers() -> Iterator[None]:
    """Worker processes started inside this block never act on SIGINT: the main process decides when a run stops
    (`lnrepro.training.signals`: at the end of a step, with a checkpoint). Ctrl+C reaches every process of the
    terminal's group; a worker that died of it would end the run with "DataLoader worker exited unexpectedly"
    before the clean stop. Blocked, not ignored: a SIGINT that reaches the main process meanwhile waits and is
    handled right after, while the workers inherit the blocked mask (across fork and exec alike). SIGTERM stays as
    it is: torch and multiprocessing end workers with it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class PassDataLoader(DataLoader):
    """A DataLoader that tells its dataset when a pass over it starts and ends, through the dataset's
    `pass_started()` and `pass_ended()` where it has them (`lnrepro.data.imagenet.DecodedSplit` counts the images
    it skipped in a pass and logs the count at its end).

    The start comes before the pass's iterator exists, so before any worker loads an image for it; the end comes
    when the pass is exhausted or its iterator is closed (an epoch cut short by `limit_*_batches`, an error).
    """

    def __iter__(self):
        started, ended = (getattr(self.dataset, name, None) for name in ("pass_started", "pass_ended"))
        if started is not None:
            started()
        try:
            yield from self._batches()
        finally:
            if ended is not None:
                ended()

    def _batches(self):
        with ctrl_c_blocked_in_new_workers():  # the workers start here (the first pass, or every pass)
            return super().__iter__()


class ResumableDataLoader(PassDataLoader):
    """A DataLoader that a run resumed from a mid-epoch checkpoint continues at the next batch of the epoch.

    A plain DataLoader would replay the interrupted epoch from its first batch: the resumed run would see some
    batches twice and others never. The position (`LoaderPosition`) goes into checkpoints twice: through this
    loader's `state_dict` (Lightning's interface for resumable loaders) and through the data module's, because
    Lightning hands loop states back only when it builds the loader after restoring them, which it does not when
    `configure_optimizers` asked for `estimated_stepping_batches` (the schedulers do). A checkpoint from an epoch's
    end resumes the next epoch from its start: the position applies only to a pass of the same epoch.
    """

    def __init__(self, *args, position: LoaderPosition | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.position = position if position is not None else LoaderPosition()
        self.skip = 0

    @property
    def _index_sampler(self):
        return _SkipFirst(super()._index_sampler, self)

    def state_dict(self) -> dict[str, Any]:
        return self.position.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position.load_state_dict(state)

    def _batches(self):
        # A generator: this runs at the first batch, after Lightning's set_epoch for the pass (on the
        # EpochShuffleSampler, or on the DistributedSampler wrapping it under DDP).
        self.skip = self.position.start(getattr(self.sampler, "epoch", None))
        for batch in super()._batches():
            self.position.batches += 1
            yield batch


class SplitDataModule(pl.LightningDataModule):
    """A train/val/test split served by DataLoaders that a resumed run replays exactly.

    Subclasses fill `train_set`, `val_set` and `test_set` in `setup`, and may set `collate_fn` and
    `drop_last_train`.
    """

    collate_fn: Callable[[Any], Any] | None = None
    drop_last_train: bool = False

    def __init__(
        self,
        batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        shuffle_seed: int = 0,
        persistent_workers: bool = True,
    ):
        super().__init__()
        self.batch_size = check_batch_size(batch_size)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.shuffle_seed = shuffle_seed
        self.persistent_workers = persistent_workers and num_workers > 0
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.train_position = LoaderPosition()

    def state_dict(self) -> dict[str, Any]:
        # Saved with every checkpoint, restored before the training loader is built (see ResumableDataLoader).
        return {"train_position": self.train_position.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "train_position" in state_dict:
            self.train_position.load_state_dict(state_dict["train_position"])

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("setup() must run before the dataloaders are asked for")
        # Training resumes mid-epoch at the next batch; evaluation always runs whole.
        resumable = {"position": self.train_position} if train else {}
        return (ResumableDataLoader if train else PassDataLoader)(
            dataset,
            **resumable,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.shuffle_seed) if train else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            collate_fn=self.collate_fn,
            drop_last=train and self.drop_last_train,
            persistent_workers=self.persistent_workers,
            # Its own generator: otherwise creating the iterator draws the worker base seed from the global RNG,
            # at a point that differs between a fresh and a resumed run.
            generator=torch.Generator().manual_seed(self.shuffle_seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
