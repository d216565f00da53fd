"""Writing files so that a crash, a kill or a full disk never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before any thread of ours writes a file.
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes its file 0600; a file written here should get the mode a plain open() would have given it.
_FILE_MODE = 0o666 & ~_umask()


def os_error_in(error: BaseException | None) -> OSError | None:
    """The first OSError in `error`'s chain (itself, then its causes and contexts): writers such as torch.save
    report a failed write as their own exception raised while handling the OSError."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself survive a power loss; some filesystems cannot fsync a directory, which is fine.
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """An open binary file that becomes `path` only once the `with` block succeeds.

    The data goes to a temporary file in the same directory, which is flushed, fsynced and renamed over `path` (a
    rename within one filesystem is atomic): readers see the old file or the new one, never a mixture. On any
    failure the temporary file is removed and `path` is left as it was; an OSError behind the failure (a full disk,
    even when the writer wrapped it in its own exception) is re-raised as an OSError naming `path`, not the
    temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:  # no inode left, no permission: name the file the caller asked for
        raise OSError(error.errno, error.strerror, str(path)) from error
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, _FILE_MODE)
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        # An OSError, or torch.save's RuntimeError around one; not Ctrl-C, exit or the caller's own errors.
        cause = os_error_in(error) if isinstance(error, (OSError, RuntimeError)) else None
        if cause is not None and cause.errno is not None:
            if cause.filename is None:
                cause.filename = str(path)  # the first failure in the chain names the file too
            raise OSError(cause.errno, cause.strerror, str(path)) from error
        raise
    _fsync_directory(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` with `atomic_writer`: the old file or the new one, never a mixture."""
    with atomic_writer(path) as file:
        file.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def cache_dir() -> Path:
    """Where lnrepro keeps what it measured about this machine (the roofline's peaks, and what later figures
    build on them): `$LNREPRO_ROOT/cache` when LNREPRO_ROOT is set (it moves `logs/` and `data/` too), else
    `$XDG_CACHE_HOME/lnrepro` (default `~/.cache/lnrepro`). Not created here: writers create it."""
    root = os.environ.get("LNREPRO_ROOT")
    if root:
        return Path(root).expanduser() / "cache"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec: a relative XDG_CACHE_HOME is invalid and is to be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "lnrepro"
