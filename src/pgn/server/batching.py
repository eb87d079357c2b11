"""Dynamic batching: concurrent requests share one forward, fairly.

Each request submits its images; one worker thread runs the model. It waits for the first image,
then gathers more for at most ``max_wait_ms``, up to ``max_batch`` images and ``max_pixels`` pixels
per forward (what one forward may cost), taking **one image per request in turn** (round robin): a
request of 64 large images cannot hold back a request of one small image for more than one forward.
Only images of the same size and the same output kind go into one forward. (TorchServe and Triton
call this dynamic batching.)
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from typing import Callable

import torch

__all__ = ["Batcher"]

Forward = Callable[[str, torch.Tensor], dict[str, torch.Tensor]]  # (kind, (B,3,H,W)) -> {name: (B, ...)}


class _Request:
    def __init__(self, kind: str, images: list[torch.Tensor]):
        self.kind = kind
        self.pending = deque(enumerate(images))  # (position, (3, H, W)) not yet in a forward
        self.results: list[dict | None] = [None] * len(images)
        self.left = len(images)
        self.future: Future = Future()


class Batcher:
    """Run ``forward(kind, batch)`` on gathered images from concurrent :meth:`submit` calls (one thread)."""

    def __init__(self, forward: Forward, max_batch: int = 32, max_wait_ms: float = 5.0, max_pixels: int | None = None):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.forward, self.max_batch, self.max_wait = forward, int(max_batch), max_wait_ms / 1000
        self.max_pixels = max_pixels
        self._queue: OrderedDict[int, _Request] = OrderedDict()  # request id -> request, in turn order
        self._next_id = 0
        self._cv = threading.Condition()
        self._closed = False
        self.forwards = 0  # forwards run so far (for tests and the load benchmark)
        self.images = 0
        self._thread = threading.Thread(target=self._run, name="pgn-batcher", daemon=True)
        self._thread.start()

    def submit(self, kind: str, images: list[torch.Tensor]) -> Future:
        """Queue ``images`` ((3, H, W) each, same size); the future gives one dict of row tensors per image."""
        req = _Request(kind, images)
        if not images:
            req.future.set_result([])
            return req.future
        with self._cv:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue[self._next_id] = req
            self._next_id += 1
            self._cv.notify()
        return req.future

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=10)

    # --- worker ---
    def _take(self, chosen: list, key, pixels: int) -> int:
        """One round over the requests in turn: at most one image from each that matches ``key``."""
        for rid in list(self._queue):
            if len(chosen) >= self.max_batch:
                break
            req = self._queue[rid]
            if not req.pending:
                continue
            pos, img = req.pending[0]
            if (req.kind, tuple(img.shape)) != key:
                continue
            if self.max_pixels and chosen and pixels + img.shape[-1] * img.shape[-2] > self.max_pixels:
                break
            req.pending.popleft()
            chosen.append((req, pos, img))
            pixels += img.shape[-1] * img.shape[-2]
            self._queue.move_to_end(rid)  # next round starts with the requests served least recently
        return pixels

    def _gather(self) -> list:
        with self._cv:
            while not self._closed and not any(r.pending for r in self._queue.values()):
                self._cv.wait()
            if self._closed:
                return []
            first = next(r for r in self._queue.values() if r.pending)
            key = (first.kind, tuple(first.pending[0][1].shape))
            chosen: list = []
            pixels = self._take(chosen, key, 0)
            deadline = time.monotonic() + self.max_wait
            while len(chosen) < self.max_batch:
                before = len(chosen)
                pixels = self._take(chosen, key, pixels)
                if len(chosen) > before:
                    continue
                if self.max_pixels and pixels >= self.max_pixels:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            return chosen

    def _run(self) -> None:
        while True:
            chosen = self._gather()
            if not chosen:
                return
            kind = chosen[0][0].kind
            try:
                out = self.forward(kind, torch.stack([img for _, _, img in chosen]))
                error = None
            except BaseException as e:  # the server answers 500 for these requests and keeps serving
                out, error = None, e
            self.forwards += 1
            self.images += len(chosen)
            with self._cv:
                for row, (req, pos, _) in enumerate(chosen):
                    if req.future.done():
                        continue
                    if error is not None:
                        req.pending.clear()
                        req.future.set_exception(error)
                    else:
                        req.results[pos] = {k: v[row] for k, v in out.items()}
                        req.left -= 1
                        if req.left == 0:
                            req.future.set_result(req.results)
                for rid in [rid for rid, r in self._queue.items() if r.future.done() or (not r.pending and r.left == 0)]:
                    del self._queue[rid]
