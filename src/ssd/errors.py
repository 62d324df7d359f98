"""The one error type the library raises for problems a user can fix.

The command line turns an :class:`SSDError` into a one-line message and a non-zero exit status;
anything else escaping is a bug and keeps its traceback.
"""


class SSDError(Exception):
    """A problem with the user's input (a file, an option, a checkpoint), stated in one line."""


class CheckpointError(SSDError):
    """A checkpoint cannot be read, is not ours, or does not fit the requested model."""


class TrainingStopped(SSDError):
    """A training run stopped early (Ctrl-C); the state was saved unless the message says otherwise."""


class TrainingDiverged(SSDError):
    """The loss, the gradient or the weights became non-finite; the last good checkpoint is kept."""
