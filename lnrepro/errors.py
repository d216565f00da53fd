"""The exceptions users see as one line.

`UserInputError`: a problem with what the user asked for (a config value, a path, a checkpoint).
`TrainingDivergedError`: the loss became NaN or infinite.
The task layer prints their message on one line and exits non-zero, without a traceback.
"""


class UserInputError(ValueError):
    """Bad user input: the message names the problem and the fix."""


class TrainingDivergedError(RuntimeError):
    """The loss stopped being finite: the message names the step and the last good checkpoint."""


USER_FACING_ERRORS = (UserInputError, TrainingDivergedError)
