"""Where a pgn server listens, and how it runs: shared by ``pgn serve``, ``pgn app`` and the background
server of the tests and benchmarks.

The listening socket is bound here, not by uvicorn, so that a busy port or an unknown host is a one-line
PGNError before anything starts; uvicorn then runs on that socket with pgn's HTTP protocol
(:mod:`pgn.web.http_protocol`: unparseable requests answered in the server's one-line JSON).
"""
from __future__ import annotations

import ipaddress
import socket

from ..errors import PGNError

__all__ = ["bind", "is_loopback", "run_app"]


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves so a busy port is a one-line PGNError, not a log + exit."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise PGNError(f"cannot resolve host {host!r} ({e.strerror}); pass an address such as `host=127.0.0.1`") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise PGNError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another `port`") from None
    sock.set_inheritable(True)
    return sock


def run_app(app, sock: socket.socket, log_level: str = "info") -> None:
    """Serve ``app`` (ASGI) on the bound ``sock`` with uvicorn until interrupted (blocks); closes ``sock``."""
    import uvicorn

    from .http_protocol import json_error_protocol

    config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("debug", "trace"),
                            http=json_error_protocol())
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
