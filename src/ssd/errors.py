"""The one error type the library raises for problems a user can fix.

The command line turns an :class:`SSDError` into a one-line message and a non-zero exit status, and an
``OSError`` too (a full disk, a read-only folder: the machine's state, not a bug; :func:`os_error_message`);
anything else escaping is a bug and keeps its traceback.
"""

import os


class SSDError(Exception):
    """A problem with the user's input (a file, an option, a checkpoint), stated in one line."""


class CheckpointError(SSDError):
    """A checkpoint cannot be read, is not ours, or does not fit the requested model."""


class TrainingStopped(SSDError):
    """A training run stopped early (Ctrl-C); the state was saved unless the message says otherwise."""


class TrainingDiverged(SSDError):
    """The loss, the gradient or the weights became non-finite; the last good checkpoint is kept."""


def os_error_message(err: OSError, path: "str | os.PathLike | None" = None) -> str:
    """One line for an I/O failure: the file (``path``, else the error's own) and the system's reason."""
    where = path if path is not None else err.filename
    reason = err.strerror or str(err) or type(err).__name__
    return f"{os.fspath(where)}: {reason}" if where is not None else reason
