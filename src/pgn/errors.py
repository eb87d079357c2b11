"""User-facing errors.

Anything that is the user's to fix (an unknown name, a missing file, a mismatched
checkpoint) raises :class:`PGNError` with one line saying what is wrong and how to
fix it. The CLI prints that line and exits non-zero; library users catch it.

Messages are worded for the library: a setting is named by its Python name in backticks,
alone (`` `img_size` ``) or with a value (`` `weights=PATH` ``). The command line shows each as
its flag (``--img-size``, ``--weights PATH``); nothing below the CLI knows the flags.
"""
import re

SETTING = re.compile(r"`([a-z][a-z0-9_]*)(?:=([^`]*))?`")  # `name` or `name=value` in a message


class PGNError(RuntimeError):
    """An error the user can fix; its message is one actionable line."""


class EndpointError(PGNError):
    """A model's server (or callable) failed, or answered outside the contract (:mod:`pgn.client.wire`).

    ``transient``: a fault of the service rather than of the request (a deadline passed, a 5xx answer, a
    refused or dropped connection), so the same request may succeed later; a retry loop reads it."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class DivergedError(PGNError):
    """Training diverged: a non-finite loss, weight or running statistic. The last good checkpoint is kept."""


class ResumeMismatch(PGNError):
    """A resumed run was asked for a setting other than its own; ``key`` names it (a library name)."""

    def __init__(self, key: str, asked, recorded=None, resumable: tuple[str, ...] = ()):
        """``resumable``: what a resume may change (``pgn.api.RESUMABLE``, the one list), named in the message."""
        self.key, self.asked, self.recorded = key, asked, recorded
        if recorded is None:
            line = f"cannot resume with `{key}` {asked!r}: a resumed run keeps its own settings"
        else:
            may = ", ".join(f"`{k}`" for k in resumable)
            line = (f"cannot resume with `{key}` {asked!r}: the run was trained with {recorded!r} (a resumed run "
                    f"keeps its own settings{f'; only {may} may change' if may else ''})")
        super().__init__(line)
