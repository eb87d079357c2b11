"""Typed, validated configs read from disk: one line naming the field for anything wrong.

Files on disk (``adapter_config.json``, ``deploy_config.json``) are validated against the
dataclasses that describe them with pydantic (already installed with FastAPI): wrong types,
wrong tuple lengths and unknown fields become a :class:`~pgn.errors.PGNError` that names the
field, never a traceback. Value checks stay in each dataclass's ``__post_init__``.
"""
from __future__ import annotations

from typing import TypeVar

from .errors import PGNError

T = TypeVar("T")


def validated(cls: type[T], raw, source: str) -> T:
    """``raw`` (parsed JSON) -> an instance of dataclass ``cls``, or a one-line PGNError about ``source``."""
    from dataclasses import fields

    from pydantic import TypeAdapter, ValidationError

    if not isinstance(raw, dict):
        raise PGNError(f"{source} must hold a JSON object, not {type(raw).__name__}; regenerate the file")
    unknown = sorted(set(raw) - {f.name for f in fields(cls)})
    if unknown:
        raise PGNError(f"{source}: unknown field {unknown[0]!r} (written by another pgn version?); fix or regenerate "
                       "the file")
    try:
        return TypeAdapter(cls).validate_python(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(part) for part in err["loc"]) or "(top level)"
        got = repr(err.get("input"))
        got = got if len(got) <= 60 else got[:57] + "..."
        more = f" (and {e.error_count() - 1} more problem(s))" if e.error_count() > 1 else ""
        raise PGNError(f"{source}: field {field!r}: {err['msg']} (got {got}){more}; fix or regenerate the file") from None
    except PGNError as e:  # a value check in __post_init__
        raise PGNError(f"{source}: {e}") from None
