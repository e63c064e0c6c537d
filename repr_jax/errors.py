"""The errors a run reports in one line, and the exit codes the CLIs give them.

=====  ==========================================================================
code   meaning
=====  ==========================================================================
0      the run completed (``summary.json`` has ``"status": "completed"``)
1      a crash: a bug or an unexpected failure (Python's traceback)
2      bad input: settings, data, a run directory or a disk/permission problem
       (:class:`RunError`, :class:`DataError`); nothing is lost
3      the run diverged: a loss, a parameter or a criterion score became NaN or
       infinite (:class:`Diverged`); ``summary.json`` has ``"status": "diverged"``
       and the last finite checkpoint is kept
130    interrupted (Ctrl-C, :class:`Interrupted`): one line naming the epoch;
       ``--resume`` continues from the newest checkpoint
=====  ==========================================================================
"""
from __future__ import annotations

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130   # 128 + SIGINT, as a shell reports a process ended by Ctrl-C


class RunError(ValueError):
    """Bad settings or a run directory that cannot be used; message is one line."""


class DataError(RuntimeError):
    """The data could not be found or read; the message (one line) says what to do."""


class UnreadableImage(DataError):
    """An image file that does not decode; ``name``: its path relative to the data root."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


class NonFiniteError(ArithmeticError):
    """A quantity that must be finite (a loss, parameters, criterion scores) is not."""


class Diverged(RuntimeError):
    """The run stopped at ``epoch`` because ``quantity`` became non-finite; ``summary`` is
    what was written to ``summary.json``."""

    def __init__(self, message: str, epoch: int, quantity: str, summary: dict | None = None):
        super().__init__(message)
        self.epoch, self.quantity, self.summary = epoch, quantity, summary or {}


class Interrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C); the message says where and how to continue."""

    @classmethod
    def during(cls, session) -> "Interrupted":
        """The interruption of a run in progress (a :class:`repr_jax.experiment.Session`)."""
        config, epoch = session.config, session.epoch + 1
        kept = session.ckpt.latest_epoch()
        where = f"at the end of epoch {epoch}" if kept == epoch else f"in epoch {epoch}"
        return cls(f"interrupted {where} of {config.epochs}; "
                   + (f"the newest checkpoint is of epoch {kept}; " if kept else "no checkpoint yet; ")
                   + f"--out {config.out} --resume continues")


__all__ = ["DataError", "Diverged", "EXIT_BAD_INPUT", "EXIT_DIVERGED", "EXIT_INTERRUPTED", "Interrupted", "NonFiniteError",
           "RunError", "UnreadableImage"]
