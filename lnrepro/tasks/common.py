"""What every task shares: one-line errors, Hydra's run facts and the facts that name a run in metrics.json
(`lnrepro.schema`)."""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lnrepro import schema
from lnrepro.errors import USER_FACING_ERRORS, ResourceExhaustedError, RunInterrupted, print_error
from lnrepro.schema import multirun_group

log = logging.getLogger("lnrepro")

DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
# torch.OutOfMemoryError (CUDA) says "out of memory"; the CPU allocator "can't allocate memory" (Linux, macOS) or
# "not enough memory" (Windows).
OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "not enough memory")


def hydra_config():
    """The running Hydra app's config, or None outside one."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except ValueError:  # not inside a Hydra app (e.g. a test calling the task directly)
        return None


def hydra_multirun_name() -> str | None:
    """`<task>/<sweep dir>` inside a Hydra multirun (its W&B group), else None."""
    from hydra.types import RunMode

    hydra_cfg = hydra_config()
    if hydra_cfg is None or hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return multirun_group(hydra_cfg.sweep.dir)


#: The model arguments metrics.json names on their own; every other resolved argument is a `model/<option>`.
NAMED_MODEL_FACTS = ("name", "width", "conv", "groups", "stem", "num_classes")


def run_facts(cfg: DictConfig) -> dict[str, Any]:
    """What a report needs to name the run, next to its numbers. The model's options are recorded as its family
    resolves them: the configs leave `conv` and `groups` null for the family's default, and a report matches rows
    by the value the network was built with (`ghostnet_ghost`, ShuffleNet V1 g=3)."""
    from lnrepro.models import resolved_arguments

    model = OmegaConf.to_container(cfg.model, resolve=True)
    options: dict[str, Any] = {}
    if model.pop("_target_", None) == "lnrepro.models.build_model":  # a user's own _target_ keeps its raw values
        model.pop("pretrained", None)
        model = {"name": model["name"], **resolved_arguments(**model)}
        # the rest (dropout, the family's own switches) too, so that an ablation's rows find their runs
        options = {schema.model_option_key(key): value for key, value in model.items() if key not in NAMED_MODEL_FACTS}
    return {
        schema.MODEL: model.get("name"),
        schema.WIDTH: model.get("width"),
        schema.CONV: model.get("conv"),
        schema.GROUPS: model.get("groups"),
        schema.STEM: model.get("stem"),
        schema.DATA: cfg.data.get("name"),
        schema.SEED: cfg.get("seed"),
        **options,
    }


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """`error`, then the exceptions it was raised from or while handling, newest first."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_FULL


def _file_in_traceback(error: BaseException) -> str | None:
    """The file that the innermost frame of `error`'s traceback was writing: an OSError from write, flush or close
    (Lightning's CSV logger writing metrics.csv) carries no file name, but the frame holds the open file."""
    frames = []
    trace = error.__traceback__
    while trace is not None:
        frames.append(trace.tb_frame)
        trace = trace.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, io.IOBase):  # fsspec's local files name theirs `path`, Python's `name`
                name = getattr(value, "path", None) or getattr(value, "name", None)
                if isinstance(name, str):
                    return name
    return None


def _config_value(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key)
    except Exception:  # an interpolation that cannot be resolved here (e.g. ${hydra:...} outside Hydra)
        return None


def _resume_hint(cfg: DictConfig) -> str:
    output_dir = _config_value(cfg, "paths.output_dir")
    last = Path(output_dir, "checkpoints", "last.ckpt") if output_dir else None
    return f"; resume from the last good checkpoint: ckpt_path={last}" if last and last.is_file() else ""


def disk_full_error(error: BaseException, cfg: DictConfig) -> ResourceExhaustedError | None:
    """A full disk (or quota) behind `error`, as one line naming the file that could not be written.

    The first failed write is the one named: writes that fail afterwards, while Lightning or Hydra clean up (the
    CSV logger's last flush, the log file), are raised while handling it and come earlier in the chain.
    """
    full = [e for e in _chain(error) if _is_disk_full(e)]
    if not full:
        return None
    names = (e.filename or _file_in_traceback(e) for e in reversed(full))  # the oldest first
    path = next((name for name in names if name), None) or _config_value(cfg, "paths.output_dir") or "the run"
    cause = DISK_FULL[full[-1].errno]
    return ResourceExhaustedError(f"{cause} writing {path}: free space or move paths.log_dir{_resume_hint(cfg)}")


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def out_of_memory_error(error: BaseException, cfg: DictConfig) -> ResourceExhaustedError | None:
    """An allocation that could not be served (CUDA or CPU) behind `error`, as one line naming the batch size."""
    for cause in _chain(error):
        message = str(cause)
        if isinstance(cause, MemoryError) or (
            isinstance(cause, RuntimeError) and any(text in message for text in OUT_OF_MEMORY)
        ):
            break
    else:
        return None
    size = re.search(r"[Tt]ried to allocate (\d+) bytes|[Tt]ried to allocate ([\d.]+ ?[KMGT]i?B)", message)
    detail = f" (tried to allocate {_mib(int(size[1])) if size and size[1] else size[2]})" if size else ""
    batch_size = _config_value(cfg, "data.batch_size")
    if not isinstance(batch_size, int) or batch_size < 2:
        return ResourceExhaustedError(f"out of memory{detail}: try a smaller model or input{_resume_hint(cfg)}")
    return ResourceExhaustedError(
        f"out of memory at data.batch_size={batch_size}{detail}: try a smaller one, "
        f"e.g. data.batch_size={batch_size // 2}{_resume_hint(cfg)}"
    )


def as_user_facing(error: BaseException, cfg: DictConfig) -> BaseException | None:
    """`error` as the one-line error a user should see, or None for a bug (which keeps its traceback)."""
    if isinstance(error, USER_FACING_ERRORS):
        return error
    return disk_full_error(error, cfg) or out_of_memory_error(error, cfg)


def _raise_when_disk_full(handler: logging.FileHandler, record: logging.LogRecord) -> None:
    """`handler.handleError` while a task runs: a full disk raises (and stops the run) instead of printing a
    traceback and carrying on. After that the file takes no more records: its unwritable buffer would fail each."""
    error = sys.exc_info()[1]
    if getattr(handler, "lnrepro_disk_full", False):
        return
    if error is None or not _is_disk_full(error):
        logging.FileHandler.handleError(handler, record)
        return
    if threading.current_thread() is not threading.main_thread():
        return  # dropped: an exception in another thread would not stop the run
    handler.lnrepro_disk_full = True
    raise OSError(error.errno, error.strerror, handler.baseFilename) from error


@contextlib.contextmanager
def log_files_stop_when_disk_full() -> Iterator[None]:
    """Make the log files (Hydra's `<task>.log`) raise on a full disk while the task runs.

    Python's logging prints "--- Logging error ---" with a traceback to stderr and goes on when a record cannot be
    written; a run whose disk is full would go on to fail later (a checkpoint) with pages of such tracebacks.
    """
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for handler in handlers:
        handler.handleError = lambda record, handler=handler: _raise_when_disk_full(handler, record)
    try:
        yield
    finally:
        for handler in handlers:
            if not getattr(handler, "lnrepro_disk_full", False):
                del handler.handleError


#: What a task is doing until it says otherwise (`lnrepro.training.signals.set_phase`), for the line a signal prints.
TASK_PHASES = {"train": "setup", "evaluate": "evaluation", "profile": "profiling"}


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run `task`; a user-facing error becomes one log line and exit status 2; SIGTERM and SIGINT stop it cleanly
    (`lnrepro.training.signals`) with one line and status 143 or 130.

        User-facing are the project's own errors and what the machine ran out of: a full disk (ENOSPC, EDQUOT, also
        when Lightning or torch wrapped it) and an allocation that could not be served (CUDA or CPU out of memory).
        In a multirun the error is re-raised instead: Hydra then records the job as failed and goes on with the
        others (the sweep ends non-zero after the last job).
    """
    from lnrepro.training.signals import stop_cleanly

    with log_files_stop_when_disk_full():
        try:
            with stop_cleanly(TASK_PHASES.get(task.__name__, task.__name__)):
                return task(cfg)
        except RunInterrupted as stop:
            # A clean stop, not a failure: one line, and the shell's status for the signal, also in a sweep (a
            # SystemExit passes through Hydra's launchers, so the sweep stops with it).
            log.warning("%s", stop)
            print(f"interrupted: {stop}", file=sys.stderr)
            sys.exit(stop.status)
        except Exception as raised:
            error = as_user_facing(raised, cfg)
            if error is None:
                raise
            log.error("%s", error)  # inside the `with`: a full log file drops the record instead of a traceback
            if hydra_multirun_name() is not None:
                if error is raised:
                    raise
                raise error from raised
    sys.exit(print_error(error))
