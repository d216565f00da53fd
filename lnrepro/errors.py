"""The exceptions users see as one line, and that line.

`UserInputError`: a problem with what the user asked for (a config value, a path, a checkpoint).
`TrainingDivergedError`: the loss became NaN or infinite.
`ResourceExhaustedError`: the disk or the memory ran out (made from the OSError/RuntimeError by `lnrepro.tasks.common`).
`RunInterrupted`: SIGTERM or SIGINT stopped the run (`lnrepro.training.signals`); it exits 128 + the signal number.
The entry points print their message with `print_error`, on one line, and exit with its status, without a traceback.
"""

from __future__ import annotations

import sys
from typing import Any


class UserInputError(ValueError):
    """Bad user input: the message names the problem and the fix."""


class TrainingDivergedError(RuntimeError):
    """The loss stopped being finite: the message names the step and the last good checkpoint."""


class ResourceExhaustedError(RuntimeError):
    """No space left for a file, or no memory for a batch: the message names the file or the batch size, and the fix."""


class RunInterrupted(BaseException):
    """SIGTERM or SIGINT stopped the run at a clean point. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` on the way (a runtime that failed to measure, a logger's guard) takes it for a failure and
    carries on. The message names what was saved and how to resume; the process exits with `status`, the shell's
    128 + signal number (143 for SIGTERM, 130 for SIGINT), also from inside a sweep, which then stops."""

    def __init__(self, signal_number: int, message: str):
        super().__init__(message)
        self.signal_number = signal_number

    @property
    def status(self) -> int:
        return 128 + self.signal_number


USER_FACING_ERRORS = (UserInputError, TrainingDivergedError, ResourceExhaustedError)

#: The exit status of a refused request or an exhausted resource; a bug keeps Python's 1 and its traceback.
USER_ERROR_STATUS = 2


def print_error(error: BaseException | str) -> int:
    """`error: <message>` on stderr, the one line a user sees; returns the exit status that goes with it."""
    print(f"error: {error}", file=sys.stderr)
    return USER_ERROR_STATUS


def check_integer(name: str, value: Any, least: int, none_allowed: bool = False) -> None:
    """Refuse `value` of setting `name` unless it is an integer >= `least` (or None, with `none_allowed`); a bool is
    not an integer here, though Python counts it as one."""
    if value is None and none_allowed:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        allowed = f"null or an integer >= {least}" if none_allowed else f"an integer >= {least}"
        raise UserInputError(f"{name}={value!r} is not possible: use {allowed}")
