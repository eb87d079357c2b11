"""Run an app with uvicorn in a background thread on a free loopback port (tests, benchmarks)."""
from __future__ import annotations

import socket
import threading
import time

import uvicorn

from .http_protocol import json_error_protocol


class BackgroundServer:
    """``with BackgroundServer(app) as s: ... s.url ...``: a real server on 127.0.0.1:<free port>."""

    def __init__(self, app, start_timeout: float = 20.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                    http=json_error_protocol()))
        self.thread = threading.Thread(target=self.server.run, kwargs=dict(sockets=[self.sock]), daemon=True)
        self.start_timeout = start_timeout

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
