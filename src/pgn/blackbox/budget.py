"""What a model behind an API costs, counted and capped: every call is metered before it is sent.

:class:`MeteredEndpoint` wraps any :class:`~pgn.client.endpoints.Endpoint` (``pgn serve``, the Open
Inference Protocol, a Python callable). Before each call it asks the :class:`QueryBudget` whether one more
call of B images still fits, counts the call as *sent* in the :class:`QueryLedger` (and lets the caller
persist the ledger), and only then sends it; an answer is counted (and persisted) when it arrives. A call
that fails is counted as sent and failed, never as answered. A fault of the service (a timeout, a 5xx
answer, a refused or dropped connection) is retried with exponential backoff a bounded number of times;
each retry is a call of its own, metered and capped the same way. Anything else (a 4xx, an answer outside
the contract of :mod:`pgn.client.wire`) fails at once.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from ..errors import EndpointError, PGNError

__all__ = ["BudgetExhausted", "MeteredEndpoint", "QueryBudget", "QueryLedger", "is_transient"]

log = logging.getLogger(__name__)

def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is a fault of the service worth retrying (the same request may succeed later).

    An :class:`~pgn.errors.EndpointError` of a timeout, a 5xx answer or a lost connection is; so is an
    ``OSError`` (``TimeoutError``, ``ConnectionError``) raised by a callable endpoint. A 4xx answer, a
    malformed answer or a PGNError of the caller's own making is not: sending it again cannot help."""
    if isinstance(error, EndpointError):
        return error.transient
    return isinstance(error, OSError)


@dataclass
class QueryLedger:
    """What a run has spent, as counted before and after every call (``queries.json`` in the run)."""

    calls_sent: int = 0       # every call attempted, retries included
    images_sent: int = 0      # every canvas in those calls
    calls_answered: int = 0   # calls that came back with an answer
    images_answered: int = 0
    calls_failed: int = 0     # sent, and never answered (counted in calls_sent too)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "queries.json") -> "QueryLedger":
        try:
            return cls(**{k: int(raw[k]) for k in asdict(cls())})
        except (KeyError, TypeError, ValueError):
            raise PGNError(f"{where} is not a pgn query ledger; the run is damaged, start a new one") from None


class BudgetExhausted(Exception):
    """The next call would exceed the query budget: not an error, the run stops cleanly and says so."""


@dataclass(frozen=True)
class QueryBudget:
    """The most a run may send: ``max_queries`` images and/or ``max_calls`` calls (None: no cap)."""

    max_queries: int | None = None
    max_calls: int | None = None

    def __post_init__(self):
        for name in ("max_queries", "max_calls"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise PGNError(f"`{name}` must be a positive number of {'images' if name == 'max_queries' else 'calls'}"
                               f", got {value!r}")

    def fits(self, ledger: QueryLedger, calls: int, images: int) -> bool:
        """Whether ``calls`` more calls carrying ``images`` more images stay within the budget."""
        if self.max_queries is not None and ledger.images_sent + images > self.max_queries:
            return False
        return self.max_calls is None or ledger.calls_sent + calls <= self.max_calls

    def describe(self, ledger: QueryLedger) -> str:
        """``"120 of 130 images, 12 of 20 calls"``: what is spent of what is allowed."""
        images = f"{ledger.images_sent} of {self.max_queries} images" if self.max_queries else \
            f"{ledger.images_sent} images"
        calls = f"{ledger.calls_sent} of {self.max_calls} calls" if self.max_calls else f"{ledger.calls_sent} calls"
        return f"{images}, {calls}"


class MeteredEndpoint:
    """``scores(canvases)`` through ``endpoint``, counted in ``ledger``, capped by ``budget``, retried on faults.

    ``retries``: how many times a faulty call is sent again (so at most ``retries + 1`` attempts);
    ``backoff``: seconds before the first retry, doubled for each next one; ``on_send(ledger)``: called
    after a call is counted and before it is sent (the trainer writes ``queries.json`` there, so a run
    killed mid-call has still counted it); ``sleep``: how to wait (tests pass a recorder).
    """

    def __init__(self, endpoint, budget: QueryBudget | None = None, ledger: QueryLedger | None = None, *,
                 retries: int = 3, backoff: float = 0.5, on_send: Callable[[QueryLedger], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        if retries < 0 or backoff < 0:
            raise PGNError(f"`retries` and `backoff` must not be negative, got {retries} and {backoff}")
        self.endpoint, self.budget = endpoint, budget or QueryBudget()
        self.ledger = ledger if ledger is not None else QueryLedger()
        self.retries, self.backoff, self.on_send, self.sleep = retries, backoff, on_send, sleep

    @property
    def where(self) -> str:
        model = getattr(self.endpoint, "model", None)
        return (self.endpoint.url or self.endpoint.kind) + (f" (model {model!r})" if model else "")

    def _count(self, **changes: int) -> None:
        for key, value in changes.items():
            setattr(self.ledger, key, getattr(self.ledger, key) + value)

    def scores(self, canvases: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, S) the model's scores; BudgetExhausted when the call would not fit."""
        n = len(canvases)
        for attempt in range(self.retries + 1):
            if not self.budget.fits(self.ledger, 1, n):
                raise BudgetExhausted(f"the query budget is spent ({self.budget.describe(self.ledger)}); the next "
                                      f"call of {n} images would exceed it")
            self._count(calls_sent=1, images_sent=n)
            if self.on_send is not None:
                self.on_send(self.ledger)
            try:
                answer = self.endpoint.scores(canvases)
            except Exception as e:  # noqa: BLE001 - counted, then retried or raised as it is
                self._count(calls_failed=1)
                if self.on_send is not None:
                    self.on_send(self.ledger)
                if not is_transient(e):
                    raise
                if attempt == self.retries:
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise EndpointError(f"{self.where} failed {attempt + 1} times in a row (last: {first}); "
                                        "check the server, then resume the run") from None
                wait = self.backoff * 2 ** attempt
                log.warning(f"call {self.ledger.calls_sent} to {self.where} failed ({str(e).splitlines()[0][:160]}); "
                            f"retry {attempt + 1} of {self.retries} in {wait:g} s")
                self.sleep(wait)
                continue
            self._count(calls_answered=1, images_answered=n)
            if self.on_send is not None:
                self.on_send(self.ledger)
            return answer
        raise AssertionError("unreachable")
