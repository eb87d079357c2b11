"""A small client for the embedding server (:mod:`pgn.serving.server`)."""
from __future__ import annotations

import io
from typing import Sequence

import httpx
import numpy as np

from ..errors import PGNError

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
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)
        self._info: dict | None = None

    # --- plumbing ---
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "EmbeddingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw) -> dict:
        url = self.base_url + path
        try:
            r = self._http.request(method, path, **kw)
        except httpx.ConnectError:
            raise PGNError(f"embedding server at {self.base_url} is not reachable; start one with "
                           "`pgn serve --backbone NAME` or check the URL") from None
        except httpx.TimeoutException:
            raise PGNError(f"embedding server at {url} did not answer within {self.timeout} s; "
                           "raise the timeout or send fewer images per request") from None
        except httpx.HTTPError as e:
            raise PGNError(f"request to {url} failed: {type(e).__name__}: {e}") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            detail = " ".join(str(detail).split())[:500] or r.reason_phrase
            raise PGNError(f"server at {url} answered {r.status_code}: {detail}")
        try:
            return r.json()
        except ValueError:
            raise PGNError(f"server at {url} answered {r.status_code} with non-JSON content; "
                           "is this a pgn embedding server?") from None

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
            e = np.asarray(out["embeddings"], dtype=np.float32)
            if e.ndim != 2 or e.shape[0] != len(chunk):
                raise PGNError(f"server at {self.base_url}/embed answered {e.shape[0] if e.ndim else 0} embeddings "
                               f"for {len(chunk)} images; is this a pgn embedding server?")
            embs.append(e)
            if out.get("logits") is not None:
                logits.append(np.asarray(out["logits"], dtype=np.float32))
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
            scores = np.asarray(self._request("POST", "/classify", files=files).get("scores"), dtype=np.float32)
            if scores.ndim != 2 or scores.shape[0] != len(chunk):
                raise PGNError(f"server at {self.base_url}/classify answered scores of shape {scores.shape} for "
                               f"{len(chunk)} images; is this a pgn model server?")
            out.append(scores)
        return np.concatenate(out)
