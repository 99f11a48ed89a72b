"""Errors that stop a run with a message for the user (import-light: the entry points catch them early).

Every error a user can fix (a setting, a data row, a file) derives from :class:`UserError`; ``train.py`` and
``eval.py`` print its message as one line (the traceback with ``HYDRA_FULL_ERROR=1``) and exit non-zero.
"""


class UserError(Exception):
    """A run cannot start or go on because of something the user can change; the message names it."""


class NonFiniteError(UserError, RuntimeError):
    """Training produced a NaN/inf loss, gradient or weight; raised instead of going on (or saving it)."""


class DataError(UserError, ValueError):
    """A data file or split that cannot be used as a whole (empty, not JSON, wrong shape, no rows left)."""


class FileAccessError(UserError, OSError):
    """A file or folder that cannot be read or written (missing, permissions, a full disk)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder that a setting names and that does not exist."""


class ResumeError(UserError, ValueError):
    """A checkpoint cannot be resumed with this configuration (another method, M, T, base model or LoRA shape)."""


class Interrupted(Exception):  # noqa: N818  (not an error: the run stopped on request)
    """The run stopped on a signal (SIGTERM, SIGINT, SIGUSR1) after writing ``last.ckpt`` at an optimizer step."""

    def __init__(self, signum: int, step: int, checkpoint: str | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"signal {signum} at step {step}")
