"""User-facing errors.

Anything that is the user's to fix (an unknown name, a missing file, a mismatched
checkpoint) raises :class:`PGNError` with one line saying what is wrong and how to
fix it. The CLI prints that line and exits non-zero; library users catch it.
"""


class PGNError(RuntimeError):
    """An error the user can fix; its message is one actionable line."""


class DivergedError(PGNError):
    """Training diverged: a non-finite loss, weight or running statistic. The last good checkpoint is kept."""
