"""A plain inference server for a frozen ViT (timm, open_clip or torchvision): images in, embeddings
or class scores out.

The server knows nothing about prompts. For input-space deployment a client composes the prompted
canvas itself and sends it here; the server runs the model's own, unmodified forward
(:mod:`pgn.serving.models` says which, per library). Concurrent requests are gathered into one
forward (:mod:`pgn.serving.batching`), fairly, in the precision it is given (fp32 unless asked; ``/info`` names it).

Endpoints (every error answers ``{"detail": "<one line>"}``):

``GET /health``     ``{"status": "ok", "backbone": NAME}``
``GET /info``       backbone, family, patch_size, width, mean, std, input_size, accepted sizes, classes,
                    endpoints, precision, limits
``POST /embed``     multipart field ``file`` (one image) or ``files`` (a batch of same-size images),
                    PNG or JPEG, any mode (converted to RGB), NOT resized. Answers
                    ``{"embeddings": [[float, ...], ...], "grid": [H/P, W/P], "size": [H, W]}`` plus
                    ``"logits"`` when the model has a head of its own. Refused (403) by a hosted classifier.
``POST /classify``  the same upload; answers ``{"scores": [[float, ...], ...], "classes": [...]}``: the
                    class scores of the model's own head (CLIP: its zero-shot head over ``classes``).

Sizes: timm ViTs take sides that are positive multiples of the patch size up to ``max_side``;
open_clip and torchvision ViTs take their native input size only.

Status codes: 413 upload over ``max_upload_bytes`` (the whole request body), batch over
``max_batch`` images or over ``max_request_pixels`` pixels; 415 not a PNG/JPEG or corrupt; 422 wrong
image size, mixed sizes in a batch or no image field; 400 malformed multipart; 403 an endpoint this
server does not offer; 500 only for a model failure (the server keeps running).
"""
from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..backbones.base import FrozenBackbone
from ..data.base import check_pixels, pixel_budget, to_rgb
from ..errors import PGNError
from ..pixels import from_uint8
from ..precision import autocast
from ..precision import check as check_precision
from ..precision import resolve as resolve_precision
from .batching import Batcher
from .models import ServedModel, served_model
from .net import bind, is_loopback, run_app

log = logging.getLogger(__name__)
__all__ = ["create_app", "serve", "DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_MAX_SIDE", "DEFAULT_MAX_BATCH"]

DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
DEFAULT_MAX_SIDE = 1024
DEFAULT_MAX_BATCH = 64      # images per request
DEFAULT_FORWARD_BATCH = 32  # images per forward, gathered from concurrent requests
DEFAULT_MAX_WAIT_MS = 5.0   # how long the first image of a forward waits for company
_IMAGE_FIELDS = ("file", "files")
_FORMATS = ("PNG", "JPEG")


class _Reject(Exception):
    """A client error to answer with ``status`` and a one-line ``detail``."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _one_line(text: Any, limit: int = 500) -> str:
    s = " ".join(str(text).split())
    return s[:limit] if s else ""


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": _one_line(detail)}, status_code=status)


def _valid_sizes_hint(side: int, patch: int, max_side: int) -> str:
    """The valid side lengths nearest to ``side`` (for error messages)."""
    top = (max_side // patch) * patch
    down = min(max((side // patch) * patch, patch), top)
    up = min(max(-(-side // patch) * patch, patch), top)
    return str(down) if down == up else f"{down} or {up}"


def _decode(data: bytes, label: str, patch: int, max_side: int, native: tuple[int, int] | None = None,
            pixels: bool = True) -> np.ndarray | tuple[int, int]:
    """PNG/JPEG bytes -> (H, W, 3) uint8 RGB, refusing wrong sizes before decoding any pixels.

    ``pixels=False``: every check on the header only, and (H, W) back; nothing is decoded.
    """
    if not data:
        raise _Reject(415, f"{label} is empty; send a PNG or JPEG image")
    try:
        # Image.open only parses the header: the size check below runs before any pixel is decoded,
        # so a small file that claims a huge canvas (decompression bomb) is refused cheaply.
        with pixel_budget():  # pgn's budget (check_pixels below), not Pillow's own limit
            img = Image.open(io.BytesIO(data), formats=_FORMATS)
        with img:
            w, h = img.size
            if w > max_side or h > max_side or w * h > max_side * max_side:
                raise _Reject(
                    422,
                    f"{label} is {w}x{h} pixels (width x height) but this server accepts at most "
                    f"{max_side}x{max_side}; send an image with sides that are multiples of {patch} up to {max_side}")
            try:
                check_pixels(w, h, label)  # the budget every pgn image decoder shares
            except PGNError as e:
                raise _Reject(422, str(e)) from None
            if native is not None and (h, w) != native:
                raise _Reject(422, f"{label} is {w}x{h} pixels (width x height) but this model takes "
                                   f"{native[1]}x{native[0]} only (its positional grid is fixed); compose the canvas "
                                   "at that size (the frame layout does); the server does not resize")
            if w <= 0 or h <= 0 or w % patch or h % patch:
                raise _Reject(
                    422,
                    f"{label} is {w}x{h} pixels (width x height) but both sides must be positive multiples of the "
                    f"patch size {patch} (at most {max_side}); nearest valid width {_valid_sizes_hint(w, patch, max_side)}, "
                    f"height {_valid_sizes_hint(h, patch, max_side)}; the server does not resize")
            if not pixels:
                return h, w
            img.load()
            try:
                rgb = to_rgb(img, label)  # the conversion the CLI and the datasets use: 16-bit and float too
            except PGNError as e:
                raise _Reject(415, str(e)) from None
            arr = np.array(rgb, dtype=np.uint8)
    except _Reject:
        raise
    except UnidentifiedImageError:
        raise _Reject(415, f"{label} is not a PNG or JPEG image") from None
    except Image.DecompressionBombError:
        raise _Reject(422, f"{label} declares too many pixels; at most {max_side}x{max_side} is accepted") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise _Reject(415, f"{label} could not be decoded as PNG/JPEG ({_one_line(e, 200)})") from None
    if arr.shape != (h, w, 3):  # pragma: no cover - PIL guarantees this for RGB
        raise _Reject(415, f"{label} decoded to an unexpected shape {arr.shape}")
    return arr


def normalise(pixels: np.ndarray, mean, std) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, ToTensor (x / 255) then Normalize((x - mean) / std)."""
    return from_uint8(pixels, mean, std)


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413, declared or streamed (chunked).

    A declared ``Content-Length`` over the limit is refused before the app runs; a body that grows past
    it while streaming raises ``HTTPException(413)`` inside the app's read, which the app's handler
    answers as one line of JSON. Nothing past the limit is buffered.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _error(400, f"invalid Content-Length header {declared.decode(errors='replace')!r}")(
                    scope, receive, send)
            if int(declared) > self.max_bytes:
                return await _error(413, f"upload of {int(declared)} bytes is over this server's limit of "
                                         f"{self.max_bytes} bytes; send smaller images or fewer per request")(
                    scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise StarletteHTTPException(413)
            return message

        await self.app(scope, counted, send)


def create_app(
    model: ServedModel | FrozenBackbone,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_side: int = DEFAULT_MAX_SIDE,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    scores_only: bool = False,
    forward_batch: int = DEFAULT_FORWARD_BATCH,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    max_request_pixels: int | None = None,
    precision: str = "fp32",
) -> FastAPI:
    """The FastAPI app serving ``model``'s unmodified forward (see the module docstring).

    ``model``: a :class:`~pgn.serving.models.ServedModel`, or a backbone (served for embeddings).
    ``scores_only``: a hosted classifier: ``/classify`` alone, no embedding leaves the server.
    ``forward_batch`` / ``max_wait_ms``: dynamic batching across concurrent requests.
    ``max_request_pixels``: the work one request may ask for (default: 16 model inputs at the
    model's input size, and at least one ``max_side`` x ``max_side`` image). ``precision``:
    ``fp32`` (default), ``bf16`` (autocast) or ``auto`` (bf16 where the device runs it natively,
    :func:`pgn.precision.resolve`); ``/info`` reports the one that runs.
    """
    if not isinstance(model, ServedModel):
        model = served_model(model)
    patch = int(model.patch_size)
    if max_side < patch:
        raise PGNError(f"max_side {max_side} is smaller than the patch size {patch}; raise it")
    if max_upload_bytes <= 0 or max_batch <= 0 or forward_batch <= 0 or max_wait_ms < 0:
        raise PGNError("max_upload_bytes, max_batch and forward_batch must be positive, max_wait_ms >= 0")
    check_precision(precision)
    if scores_only and model.classes is None:
        raise PGNError(f"{model.name} has no classifier head to answer scores with; for CLIP give the class names "
                       "(`classes=FILE`)")
    max_upload_bytes, max_side, max_batch = int(max_upload_bytes), int(max_side), int(max_batch)
    native = model.native_size
    if native is not None:
        max_side = max(max_side, *native)

    pre = model.preprocessing
    mean = tuple(float(v) for v in pre.mean)
    std = tuple(float(v) for v in pre.std)
    input_pixels = int(pre.input_size) ** 2
    if max_request_pixels is None:
        max_request_pixels = max(16 * input_pixels, max_side * max_side)
    max_request_pixels = int(max_request_pixels)
    device = model.device
    precision = resolve_precision(precision, device)

    def forward(kind: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) normalised -> rows to answer with; runs on the batcher's thread."""
        x = x.to(device)
        with torch.inference_mode(), autocast(device, precision):
            if kind == "scores":
                out = {"scores": model.scores(x)}
            else:
                emb, logits = model.embed(x)
                out = {"embeddings": emb} if logits is None else {"embeddings": emb, "logits": logits}
        out = {k: v.float().cpu() for k, v in out.items()}
        if not all(torch.isfinite(v).all() for v in out.values()):
            raise _Reject(500, "the model produced non-finite outputs for this input")
        return out

    # One forward may cost as much as ``forward_batch`` model inputs (and always takes one image).
    batcher = Batcher(forward, max_batch=forward_batch, max_wait_ms=max_wait_ms,
                      max_pixels=forward_batch * max(input_pixels, 1))

    info = {
        "backbone": model.name,
        "family": model.family,
        "description": model.description,
        "patch_size": patch,
        "width": model.width,
        "feature_dim": model.feature_dim,
        "mean": list(mean),
        "std": list(std),
        "input_size": int(pre.input_size),
        "sizes": ([list(native)] if native is not None else f"multiples of {patch} up to {max_side}"),
        "num_classes": len(model.classes) if model.classes is not None else 0,
        "classes": model.classes,
        "template": model.template,  # what a zero-shot head's scores mean: a client checks it against its adapter
        "endpoints": ["/classify"] if scores_only else (["/embed", "/classify"] if model.classes else ["/embed"]),
        "precision": precision,  # resolved: "fp32" or "bf16" (autocast)
        "max_upload_bytes": max_upload_bytes,
        "max_side": max_side,
        "max_batch": max_batch,
        "max_request_pixels": max_request_pixels,
        "forward_batch": forward_batch,
        "max_wait_ms": max_wait_ms,
    }

    app = FastAPI(
        title="pgn model server",
        description=f"Unmodified forward of {model.name}: images in, " +
                    ("class scores out." if scores_only else "embeddings out."),
        version="2",
    )
    # The one thing no library gives in the form we need: a cap on the whole body, answered as our JSON.
    app.add_middleware(BodySizeLimit, max_bytes=max_upload_bytes)
    app.state.batcher = batcher
    app.state.precision = precision
    app.router.on_shutdown.append(batcher.close)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        detail = too_large if exc.status_code == 413 else exc.detail
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            detail = "malformed multipart body: send multipart/form-data with field 'file' or 'files'"
        return JSONResponse({"detail": _one_line(detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"invalid request: {where}: {first.get('msg', 'validation failed')}")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        return _error(500, f"internal server error: {type(exc).__name__}: {_one_line(exc, 300)}")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "backbone": model.name}

    @app.get("/info")
    def get_info() -> dict:
        # Live batching counters: images / forwards is the mean batch the load produced.
        return {**info, "forwards": batcher.forwards, "images_served": batcher.images}

    def decode_all(blobs: list[tuple[str, bytes]]) -> list[torch.Tensor]:
        """Check every header first (sizes, the request's pixel budget), then decode and normalise."""
        sizes = [_decode(data, label, patch, max_side, native, pixels=False) for label, data in blobs]
        total = sum(h * w for h, w in sizes)
        if total > max_request_pixels:
            raise _Reject(413, f"this request asks for {total:,} pixels of work but this server takes at most "
                               f"{max_request_pixels:,} per request (about {max_request_pixels // max(input_pixels, 1)}"
                               f" images of {pre.input_size}x{pre.input_size}); split it into several requests")
        images = [_decode(data, label, patch, max_side, native) for label, data in blobs]
        shapes = {im.shape[:2] for im in images}
        if len(shapes) > 1:
            listed = ", ".join(f"{label}: {im.shape[1]}x{im.shape[0]}" for (label, _), im in zip(blobs, images))
            raise _Reject(422, f"all images of a batch must have the same size (width x height), got {listed}")
        return list(normalise(np.stack(images), mean, std))

    async def run(kind: str, blobs: list[tuple[str, bytes]]) -> tuple[list[dict], tuple[int, int]]:
        """Rows of the model's outputs, one per image, and the images' (H, W)."""
        images = await run_in_threadpool(decode_all, blobs)
        rows = await asyncio.wrap_future(batcher.submit(kind, images))
        return rows, tuple(images[0].shape[-2:])

    too_large = (f"upload is over this server's limit of {max_upload_bytes} bytes; "
                 "send smaller images or fewer per request")

    async def blobs_of(file: UploadFile | None, files: list[UploadFile] | None) -> list[tuple[str, bytes]]:
        parts = ([("file", file)] if file is not None else []) + [("files", f) for f in files or []]
        if not parts:
            raise _Reject(422, "no image uploaded: send multipart/form-data with field 'file' (one image) or "
                               "'files' (a batch)")
        if len(parts) > max_batch:
            raise _Reject(413, f"batch of {len(parts)} images is over this server's limit of {max_batch} images; "
                               "split it into several requests")
        blobs = []
        for i, (field, up) in enumerate(parts):
            name = up.filename or f"{field}[{i}]"
            label = f"image {i} ({name})" if len(parts) > 1 else f"image {name!r}"
            blobs.append((label, await up.read()))
        return blobs

    async def answer(kind: str, file: UploadFile | None, files: list[UploadFile] | None) -> JSONResponse:
        try:
            blobs = await blobs_of(file, files)
            rows, (h, w) = await run(kind, blobs)
        except _Reject as r:
            return _error(r.status, r.detail)
        if kind == "scores":
            return JSONResponse({"scores": [r["scores"].tolist() for r in rows], "classes": model.classes})
        result = {"embeddings": [r["embeddings"].tolist() for r in rows], "grid": [h // patch, w // patch],
                  "size": [h, w]}
        if "logits" in rows[0]:
            result["logits"] = [r["logits"].tolist() for r in rows]
        return JSONResponse(result)

    one = File(None, description="one PNG/JPEG image")
    many = File(None, description="a batch of same-size PNG/JPEG images")

    @app.post("/embed")
    async def embed(file: UploadFile | None = one, files: list[UploadFile] | None = many):
        if scores_only:
            return _error(403, "this server is a hosted classifier: it answers class scores only (POST /classify)")
        return await answer("embed", file, files)

    @app.post("/classify")
    async def classify(file: UploadFile | None = one, files: list[UploadFile] | None = many):
        if model.classes is None:
            return _error(403, f"{model.name} has no classifier head; this server answers embeddings only (POST /embed)")
        return await answer("scores", file, files)

    return app


def serve(
    backbone_name: str,
    weights: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_side: int = DEFAULT_MAX_SIDE,
    log_level: str = "info",
    device: str = "cpu",
    *,
    classes_file: str | None = None,
    precision: str = "fp32",
    forward_batch: int = DEFAULT_FORWARD_BATCH,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    max_request_pixels: int | None = None,
) -> None:
    """Build ``backbone_name`` on ``device`` and serve it with uvicorn until interrupted (blocks).

    ``classes_file`` (class names, one per line, optional ``template:`` first line) makes the server a
    hosted classifier: ``/classify`` answers class scores (CLIP: its zero-shot head) and no embedding.
    """
    from ..backbones import create_backbone
    from .models import read_class_file

    classes, template = read_class_file(classes_file) if classes_file else (None, None)
    backbone = create_backbone(backbone_name, weights=weights)
    backbone.to(device)  # the app runs its forward where the backbone's weights are
    model = served_model(backbone, classes, template)
    app = create_app(model, max_upload_bytes=max_upload_bytes, max_side=max_side, scores_only=classes is not None,
                     precision=precision, forward_batch=forward_batch, max_wait_ms=max_wait_ms,
                     max_request_pixels=max_request_pixels)
    if not is_loopback(host):
        log.warning(f"warning: serving on {host}, which is not a loopback address: anyone who can reach this "
                    "machine can use the model (there is no authentication); use `host=127.0.0.1` to keep it local")
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    what = f"class scores over {len(classes)} classes" if classes else "embeddings"
    log.info(f"serving {backbone.name} ({model.family}, {what}) on http://{shown}:{sock.getsockname()[1]} "
             f"(patch {model.patch_size}, sides up to {max_side}, uploads up to {max_upload_bytes} bytes, "
             f"{app.state.batcher.max_batch} images per forward, precision {app.state.precision})")
    run_app(app, sock, log_level=log_level)
