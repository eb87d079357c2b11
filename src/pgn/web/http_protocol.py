"""uvicorn's HTTP protocol with pgn's error shape.

A request that uvicorn cannot even parse (a malformed request line, broken headers) is answered by
the protocol layer before any route runs, as ``text/plain``. Every other error of the server is the
one-line JSON ``{"detail": ...}`` (FastAPI's shape), so a client needs one way to read failures; this
protocol answers those 400s in that shape too. It subclasses the protocol uvicorn picks itself
(httptools where installed, else h11), changing only that answer.
"""
from __future__ import annotations

import json

_STATUS_400 = b"HTTP/1.1 400 Bad Request\r\n"


def _body(msg: str) -> bytes:
    reason = " ".join(str(msg).split()) or "malformed request"
    return json.dumps({"detail": f"malformed HTTP request ({reason}); send a well-formed HTTP/1.1 request"}).encode()


def _write_400(protocol, msg: str) -> None:
    body = _body(msg)
    head = [_STATUS_400]
    for name, value in protocol.server_state.default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [b"content-type: application/json\r\n", b"content-length: " + str(len(body)).encode() + b"\r\n",
             b"connection: close\r\n", b"\r\n"]
    protocol.transport.write(b"".join(head) + body)
    protocol.transport.close()


def json_error_protocol() -> type:
    """The HTTP protocol class for ``uvicorn.Config(http=...)``."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # no httptools: uvicorn's pure-Python h11 protocol
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class JsonErrorProtocol(base):
        def send_400_response(self, msg: str) -> None:
            _write_400(self, msg)

    return JsonErrorProtocol
