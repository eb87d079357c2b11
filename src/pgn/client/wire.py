"""What the client accepts from a server it does not control: one request, bounded, and an answer checked.

Every endpoint kind (``pgn serve``, the Open Inference Protocol, a Python callable) goes through the same
contract before any number it answers is used:

* a request has a total deadline (not only a per-read timeout: a server that drips one byte at a time is
  cut off) and a cap on the body it may answer, counted after decompression (a gzip bomb is cut off too);
* the body is a JSON object; anything else is a one-line error naming the server and what came back;
* an answer is a table of finite numbers with one row per canvas sent and the width the adapter reads
  (:func:`check_answer`).

A violation is a :class:`~pgn.errors.EndpointError` (a PGNError) of one line naming the server, the model and what was
wrong: the command line turns it into exit status 2.
"""
from __future__ import annotations

import json
import time
import zlib

import numpy as np

from ..errors import EndpointError

__all__ = ["DEADLINE_S", "MAX_RESPONSE_BYTES", "check_answer", "request_json", "to_table"]

DEADLINE_S = 120.0                # one request, from sending to the last byte of the answer
MAX_RESPONSE_BYTES = 256 * 2**20  # decoded: 1,000 float scores for 1,000 canvases is about 20 MB of JSON


def _short(text: str, n: int = 300) -> str:
    return " ".join(str(text).split())[:n]


def request_json(http, method: str, path: str, *, where: str, deadline: float = DEADLINE_S,
                 max_bytes: int | None = None, unreachable: str = "", **kw) -> dict:
    """``method path`` on ``http`` (an ``httpx.Client``) -> the answer's JSON object, within ``deadline`` seconds
    and ``max_bytes`` decoded bytes; every failure one line naming ``where``. A status of 400 or more is an
    error carrying the server's own message (``detail`` or ``error``); a redirect is never followed."""
    import httpx

    max_bytes = MAX_RESPONSE_BYTES if max_bytes is None else max_bytes
    start = time.monotonic()
    chunks, size = [], 0

    def take(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > max_bytes:
            raise EndpointError(f"{where} answered more than {max_bytes / 2**20:.0f} MiB; a model's answer is far "
                                "smaller: is this the right server?")
        chunks.append(data)

    headers = {"Accept-Encoding": "gzip, deflate", **kw.pop("headers", {})}  # only what is decoded below
    try:
        with http.stream(method, path, headers=headers, **kw) as r:
            encoding = r.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
                raise EndpointError(f"{where} answered in the content encoding {encoding[:20]!r}; pgn reads gzip, "
                                    "deflate or none")
            # Decoded here, a bounded piece at a time: a small compressed body cannot inflate past the cap in memory.
            inflate = zlib.decompressobj(47) if encoding not in ("", "identity") else None  # 47: zlib or gzip header
            for raw in r.iter_raw():
                if inflate is None:
                    take(raw)
                else:
                    while raw:
                        take(inflate.decompress(raw, max_bytes - size + 1))
                        raw = inflate.unconsumed_tail
                if time.monotonic() - start > deadline:
                    raise EndpointError(f"{where} did not finish answering within {deadline:g} s (the request's "
                                        "deadline); check the server, or send fewer images per request",
                                        transient=True)
            if inflate is not None:
                take(inflate.flush())
            status, reason, location = r.status_code, r.reason_phrase, r.headers.get("location")
    except httpx.ConnectError:
        raise EndpointError(f"{where} is not reachable; {unreachable or 'start it, or check the URL'}",
                            transient=True) from None
    except httpx.TimeoutException:
        raise EndpointError(f"{where} did not answer within {deadline:g} s (the request's deadline); check the server, "
                            "or send fewer images per request", transient=True) from None
    except zlib.error as e:
        raise EndpointError(f"{where} answered a corrupt compressed body ({e})") from None
    except httpx.HTTPError as e:  # a broken connection, a malformed response
        raise EndpointError(f"request to {where} failed: {type(e).__name__}: {_short(e)}", transient=True) from None
    text = b"".join(chunks)
    if 300 <= status < 400:
        raise EndpointError(f"{where} answered {status} (a redirect{f' to {location}' if location else ''}, not "
                       "followed); give the server's own URL")
    try:
        body = json.loads(text) if text else None
    except (ValueError, UnicodeDecodeError):
        body = None
        if status < 400:
            raise EndpointError(f"{where} answered {status} with content that is not JSON; is it the right kind of "
                           "server?") from None
    if status >= 400:
        detail = (body.get("detail") or body.get("error")) if isinstance(body, dict) else None
        raise EndpointError(f"{where} answered {status}: {_short(detail or text.decode('utf-8', 'replace')) or reason}",
                            transient=status >= 500)
    if not isinstance(body, dict):
        raise EndpointError(f"{where} answered a JSON {type(body).__name__ if body is not None else 'null'}, not an "
                       "object; is it the right kind of server?")
    return body


def to_table(value, where: str, what: str) -> np.ndarray:
    """A JSON value that must be a (rows, columns) table of numbers -> float32 array, or one line naming ``where``."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise EndpointError(f"{where} answered {what} that are not numbers") from None
    if arr.ndim != 2:
        raise EndpointError(f"{where} answered {what} of shape {arr.shape}, not a table of one row per image")
    return _finite(arr, where, what)


def _finite(arr: np.ndarray, where: str, what: str) -> np.ndarray:
    bad = ~np.isfinite(arr)
    if bad.any():
        kind = "NaN" if np.isnan(arr).any() else "infinite"
        raise EndpointError(f"{where} answered {kind} values in its {what} ({int(bad.sum())} of {arr.size}); the model "
                       "or the server is broken")
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise EndpointError(f"{where} answered {what} too large for 32-bit floats")
    return out


def check_answer(answer, rows: int, width: int, where: str, what: str) -> np.ndarray:
    """The contract of every endpoint's answer: (rows, width) finite numbers -> float32, or one line.

    ``rows``: the canvases sent; ``width``: what the adapter reads (its classes, the label map's source
    classes, or the embedding width)."""
    try:
        arr = np.asarray(answer, dtype=np.float64)
    except (TypeError, ValueError):
        raise EndpointError(f"{where} answered {what} that are not numbers") from None
    if arr.ndim != 2 or arr.shape[0] != rows:
        got = f"{arr.shape[0]} rows" if arr.ndim == 2 else f"shape {arr.shape}"
        raise EndpointError(f"{where} answered {got} of {what} for {rows} images; a model answers one row per image")
    if arr.shape[1] != width:
        raise EndpointError(f"{where} answered {arr.shape[1]} {what} per image, but this adapter reads {width}; serve "
                       "the model it was trained on")
    return _finite(arr, where, what)
