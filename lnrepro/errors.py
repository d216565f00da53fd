"""The exceptions users see as one line.

`UserInputError`: a problem with what the user asked for (a config value, a path, a checkpoint).
`TrainingDivergedError`: the loss became NaN or infinite.
`ResourceExhaustedError`: the disk or the memory ran out (made from the OSError/RuntimeError by `lnrepro.tasks.common`).
The task layer prints their message on one line and exits non-zero, without a traceback.
"""


class UserInputError(ValueError):
    """Bad user input: the message names the problem and the fix."""


class TrainingDivergedError(RuntimeError):
    """The loss stopped being finite: the message names the step and the last good checkpoint."""


class ResourceExhaustedError(RuntimeError):
    """No space left for a file, or no memory for a batch: the message names the file or the batch size, and the fix."""


USER_FACING_ERRORS = (UserInputError, TrainingDivergedError, ResourceExhaustedError)
