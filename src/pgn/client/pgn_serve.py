"""A small client for the embedding server (:mod:`pgn.server.server`, ``pgn serve``), on the client side of the wire."""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from ..errors import PGNError
from .wire import to_table

__all__ = ["EmbeddingClient"]

_PART_OVERHEAD = 512  # multipart headers and boundary per image, generously


def _pixels(image: bytes) -> int:
    """Width x height from the image header (no decoding); 0 if unreadable (the server will say why)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image)) as img:
            return img.size[0] * img.size[1]
    except Exception:
        return 0


class EmbeddingClient:
    """Embeds PNG images with a running ``pgn serve`` server.

    ``embed_png`` splits large batches to stay under the server's ``max_batch`` and
    ``max_upload_bytes`` (read once from ``/info``).
    """

    def __init__(self, base_url: str, timeout: float = 60):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        from .endpoints import http_client

        self._http = http_client(self.base_url, timeout)
        self._info: dict | None = None

    # --- plumbing ---
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "EmbeddingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw) -> dict:
        from .wire import request_json

        return request_json(self._http, method, path, where=f"embedding server at {self.base_url + path}",
                            deadline=self.timeout, unreachable="start one with `pgn serve --backbone NAME`, or check the URL",
                            **kw)

    # --- API ---
    def health(self) -> dict:
        return self._request("GET", "/health")

    def info(self) -> dict:
        """The server's backbone description and limits (cached after the first call)."""
        if self._info is None:
            self._info = self._request("GET", "/info")
        return dict(self._info)

    def _chunks(self, images: list[bytes]) -> list[list[bytes]]:
        info = self.info()
        max_batch = int(info.get("max_batch", len(images)) or len(images))
        max_bytes = int(info.get("max_upload_bytes", 0) or 0)
        max_pixels = int(info.get("max_request_pixels", 0) or 0)
        chunks, cur, cur_bytes, cur_pixels = [], [], 0, 0
        for im in images:
            size = len(im) + _PART_OVERHEAD
            pixels = _pixels(im) if max_pixels else 0
            if cur and (len(cur) >= max_batch or (max_bytes and cur_bytes + size > max_bytes)
                        or (max_pixels and cur_pixels + pixels > max_pixels)):
                chunks.append(cur)
                cur, cur_bytes, cur_pixels = [], 0, 0
            cur.append(im)
            cur_bytes += size
            cur_pixels += pixels
        if cur:
            chunks.append(cur)
        return chunks

    def embed_png(self, images: Sequence[bytes] | bytes) -> tuple[np.ndarray, np.ndarray | None]:
        """PNG (or JPEG) bytes of same-size images -> ((B, F) float32 embeddings, (B, C) float32 logits or None)."""
        if isinstance(images, (bytes, bytearray)):
            images = [bytes(images)]
        images = list(images)
        if not images:
            raise PGNError("embed_png needs at least one image")
        embs, logits = [], []
        for chunk in self._chunks(images):
            files = [("files", (f"image{i}.png", data, "image/png")) for i, data in enumerate(chunk)]
            out = self._request("POST", "/embed", files=files)
            where = f"server at {self.base_url}/embed"
            e = to_table(out.get("embeddings"), where, "embeddings")
            if e.shape[0] != len(chunk):
                raise PGNError(f"{where} answered {e.shape[0]} embeddings for {len(chunk)} images; is this a pgn "
                               "embedding server?")
            embs.append(e)
            if out.get("logits") is not None:
                logits.append(to_table(out["logits"], where, "logits"))
        emb = np.concatenate(embs)
        return emb, (np.concatenate(logits) if len(logits) == len(embs) else None)

    def classify_png(self, images: Sequence[bytes] | bytes) -> np.ndarray:
        """PNG (or JPEG) bytes of same-size images -> (B, C) float32 class scores of the model's own head."""
        if isinstance(images, (bytes, bytearray)):
            images = [bytes(images)]
        images = list(images)
        if not images:
            raise PGNError("classify_png needs at least one image")
        out = []
        for chunk in self._chunks(images):
            files = [("files", (f"image{i}.png", data, "image/png")) for i, data in enumerate(chunk)]
            where = f"server at {self.base_url}/classify"
            scores = to_table(self._request("POST", "/classify", files=files).get("scores"), where, "scores")
            if scores.shape[0] != len(chunk):
                raise PGNError(f"{where} answered scores of shape {scores.shape} for {len(chunk)} images; is this a "
                               "pgn model server?")
            out.append(scores)
        return np.concatenate(out)
