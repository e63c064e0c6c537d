"""The errors a run reports in one line, and the exit codes the CLIs give them.

=====  ==========================================================================
code   meaning
=====  ==========================================================================
0      the run completed (``summary.json`` has ``"status": "completed"``)
1      a crash: a bug or an unexpected failure (Python's traceback)
2      bad input: settings, data, a run directory or a disk/permission problem
       (:class:`RunError`, :class:`repr_jax.data.DataError`); nothing is lost
3      the run diverged: a loss, a parameter or a criterion score became NaN or
       infinite (:class:`Diverged`); ``summary.json`` has ``"status": "diverged"``
       and the last finite checkpoint is kept
=====  ==========================================================================
"""
from __future__ import annotations

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


class RunError(ValueError):
    """Bad settings or a run directory that cannot be used; message is one line."""


class NonFiniteError(ArithmeticError):
    """A quantity that must be finite (a loss, parameters, criterion scores) is not."""


class Diverged(RuntimeError):
    """The run stopped at ``epoch`` because ``quantity`` became non-finite; ``summary`` is
    what was written to ``summary.json``."""

    def __init__(self, message: str, epoch: int, quantity: str, summary: dict | None = None):
        super().__init__(message)
        self.epoch, self.quantity, self.summary = epoch, quantity, summary or {}


__all__ = ["Diverged", "EXIT_BAD_INPUT", "EXIT_DIVERGED", "NonFiniteError", "RunError"]
