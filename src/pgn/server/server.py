"""A plain inference server for a frozen ViT (timm, open_clip or torchvision): images in, embeddings
or class scores out.

The server knows nothing about prompts. For input-space deployment a client composes the prompted
canvas itself and sends it here; the server runs the model's own, unmodified forward
(:mod:`pgn.server.models` says which, per library). Concurrent requests are gathered into one
forward (:mod:`pgn.server.batching`), fairly, in the precision it is given (fp32 unless asked; ``/info`` names it).

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
import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch
from fastapi import FastAPI, File, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..backbones.base import FrozenModel
from ..errors import PGNError
from ..pixels import from_uint8
from ..precision import autocast
from ..precision import check as check_precision
from ..precision import resolve as resolve_precision
from ..web.net import bind, is_loopback, run_app
from ..web.uploads import BodySizeLimit, Reject, error, install_error_handlers, read_image
from .batching import Batcher
from .models import ServedModel, served_model

log = logging.getLogger(__name__)
__all__ = ["ServerConfig", "create_app", "serve", "DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_MAX_SIDE", "DEFAULT_MAX_BATCH"]

DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
DEFAULT_MAX_SIDE = 1024
DEFAULT_MAX_BATCH = 64      # images per request
DEFAULT_FORWARD_BATCH = 32  # images per forward, gathered from concurrent requests
DEFAULT_MAX_WAIT_MS = 5.0   # how long the first image of a forward waits for company


@dataclass(frozen=True)
class ServerConfig:
    """What one server accepts and how it batches (the defaults are ``pgn serve``'s).

    ``scores_only``: a hosted classifier: ``/classify`` alone, no embedding leaves the server.
    ``forward_batch`` / ``max_wait_ms``: dynamic batching across concurrent requests.
    ``max_request_pixels``: the work one request may ask for (None: 16 model inputs at the model's input
    size, and at least one ``max_side`` x ``max_side`` image). ``precision``: ``fp32``, ``bf16`` (autocast)
    or ``auto`` (bf16 where the device runs it natively); ``/info`` reports the one that runs.
    """

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_side: int = DEFAULT_MAX_SIDE
    max_batch: int = DEFAULT_MAX_BATCH  # images per request
    scores_only: bool = False
    forward_batch: int = DEFAULT_FORWARD_BATCH
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_request_pixels: int | None = None
    precision: str = "fp32"

    def __post_init__(self):
        if self.max_upload_bytes <= 0 or self.max_batch <= 0 or self.forward_batch <= 0 or self.max_wait_ms < 0:
            raise PGNError("`max_upload_bytes`, `max_batch` and `forward_batch` must be positive, `max_wait_ms` >= 0")
        check_precision(self.precision)

    def for_model(self, model: ServedModel) -> ServerConfig:
        """This config checked against ``model``, with the limits that depend on it filled in (``max_side``
        at least the native size, ``max_request_pixels``, ``precision`` resolved on the model's device)."""
        patch = int(model.patch_size)
        if self.max_side < patch:
            raise PGNError(f"`max_side` {self.max_side} is smaller than the patch size {patch}; raise it")
        if self.scores_only and model.classes is None:
            raise PGNError(f"{model.name} has no classifier head to answer scores with; for CLIP give the class "
                           "names (`classes=FILE`)")
        max_side = max([int(self.max_side), *(model.native_size or ())])
        pixels = self.max_request_pixels
        if pixels is None:
            pixels = max(16 * int(model.preprocessing.input_size) ** 2, max_side * max_side)
        return dataclasses.replace(self, max_upload_bytes=int(self.max_upload_bytes), max_side=max_side,
                                   max_batch=int(self.max_batch), max_request_pixels=int(pixels),
                                   precision=resolve_precision(self.precision, model.device))


def _valid_sizes_hint(side: int, patch: int, max_side: int) -> str:
    """The valid side lengths nearest to ``side`` (for error messages)."""
    top = (max_side // patch) * patch
    down = min(max((side // patch) * patch, patch), top)
    up = min(max(-(-side // patch) * patch, patch), top)
    return str(down) if down == up else f"{down} or {up}"


def _decode(data: bytes, label: str, patch: int, max_side: int, native: tuple[int, int] | None = None,
            pixels: bool = True) -> np.ndarray | tuple[int, int]:
    """PNG/JPEG bytes -> (H, W, 3) uint8 RGB of a size this model takes, refused before decoding any pixel.

    ``pixels=False``: every check on the header only, and (H, W) back; nothing is decoded.
    """
    def check_size(w: int, h: int) -> None:
        if w > max_side or h > max_side:
            raise Reject(422, f"{label} is {w}x{h} pixels (width x height) but this server accepts at most "
                              f"{max_side}x{max_side}; send an image with sides that are multiples of {patch} up "
                              f"to {max_side}")
        if native is not None and (h, w) != native:
            raise Reject(422, f"{label} is {w}x{h} pixels (width x height) but this model takes "
                              f"{native[1]}x{native[0]} only (its positional grid is fixed); compose the canvas "
                              "at that size (the frame layout does); the server does not resize")
        if w <= 0 or h <= 0 or w % patch or h % patch:
            raise Reject(422, f"{label} is {w}x{h} pixels (width x height) but both sides must be positive "
                              f"multiples of the patch size {patch} (at most {max_side}); nearest valid width "
                              f"{_valid_sizes_hint(w, patch, max_side)}, height {_valid_sizes_hint(h, patch, max_side)}; "
                              "the server does not resize")

    image = read_image(data, label, check_size=check_size, decode=pixels)
    if not pixels:
        return image
    arr = np.array(image, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:  # pragma: no cover - PIL guarantees this for RGB
        raise Reject(415, f"{label} decoded to an unexpected shape {arr.shape}")
    return arr


def normalise(pixels: np.ndarray, mean, std) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, ToTensor (x / 255) then Normalize((x - mean) / std)."""
    return from_uint8(pixels, mean, std)


def create_app(model: ServedModel | FrozenModel, config: ServerConfig | None = None, **options) -> FastAPI:
    """The FastAPI app serving ``model``'s unmodified forward (see the module docstring).

    ``model``: a :class:`~pgn.server.models.ServedModel`, or a backbone (served for embeddings).
    ``config``: its :class:`ServerConfig`; or ``options``, that config's fields (``max_side=512``).
    """
    if not isinstance(model, ServedModel):
        model = served_model(model)
    config = (config or ServerConfig(**options)).for_model(model)
    batcher = _batcher(model, config)
    app = FastAPI(title="pgn model server", version="2",
                  description=f"Unmodified forward of {model.name}: images in, " +
                              ("class scores out." if config.scores_only else "embeddings out."))
    # The one thing no library gives in the form we need: a cap on the whole body, answered as our JSON.
    app.add_middleware(BodySizeLimit, max_bytes=config.max_upload_bytes)
    install_error_handlers(app, config.max_upload_bytes)
    app.state.batcher, app.state.precision, app.state.config = batcher, config.precision, config
    app.router.on_shutdown.append(batcher.close)
    info = _info(model, config)
    images_of = _request_reader(model, config)
    one = File(None, description="one PNG/JPEG image")
    many = File(None, description="a batch of same-size PNG/JPEG images")

    async def answer(kind: str, file: UploadFile | None, files: list[UploadFile] | None) -> JSONResponse:
        images = await images_of(file, files)
        rows = await asyncio.wrap_future(batcher.submit(kind, images))
        return JSONResponse(_body(kind, rows, tuple(images[0].shape[-2:]), model))

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "backbone": model.name}

    @app.get("/info")
    def get_info() -> dict:
        # Live batching counters: images / forwards is the mean batch the load produced.
        return {**info, "forwards": batcher.forwards, "images_served": batcher.images}

    @app.post("/embed")
    async def embed(file: UploadFile | None = one, files: list[UploadFile] | None = many):
        if config.scores_only:
            return error(403, "this server is a hosted classifier: it answers class scores only (POST /classify)")
        return await answer("embed", file, files)

    @app.post("/classify")
    async def classify(file: UploadFile | None = one, files: list[UploadFile] | None = many):
        if model.classes is None:
            return error(403, f"{model.name} has no classifier head; this server answers embeddings only (POST /embed)")
        return await answer("scores", file, files)

    return app


def _batcher(model: ServedModel, config: ServerConfig) -> Batcher:
    """The model's forward behind a :class:`Batcher` that gathers concurrent requests into one forward."""
    device, precision = model.device, config.precision

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
            raise Reject(500, "the model produced non-finite outputs for this input")
        return out

    # One forward may cost as much as ``forward_batch`` model inputs (and always takes one image).
    return Batcher(forward, max_batch=config.forward_batch, max_wait_ms=config.max_wait_ms,
                   max_pixels=config.forward_batch * max(int(model.preprocessing.input_size) ** 2, 1))


def _info(model: ServedModel, config: ServerConfig) -> dict:
    """``GET /info``'s fixed part: what the model is and what this server accepts."""
    pre, patch, native = model.preprocessing, int(model.patch_size), model.native_size
    endpoints = ["/classify"] if config.scores_only else (["/embed", "/classify"] if model.classes else ["/embed"])
    return {
        "backbone": model.name, "family": model.family, "description": model.description, "patch_size": patch,
        "width": model.width, "feature_dim": model.feature_dim,
        "mean": [float(v) for v in pre.mean], "std": [float(v) for v in pre.std], "input_size": int(pre.input_size),
        "sizes": [list(native)] if native is not None else f"multiples of {patch} up to {config.max_side}",
        "num_classes": len(model.classes) if model.classes is not None else 0, "classes": model.classes,
        "template": model.template,  # what a zero-shot head's scores mean: a client checks it against its adapter
        "endpoints": endpoints,
        "precision": config.precision,  # resolved: "fp32" or "bf16" (autocast)
        **{k: getattr(config, k) for k in ("max_upload_bytes", "max_side", "max_batch", "max_request_pixels",
                                           "forward_batch", "max_wait_ms")},
    }


def _request_reader(model: ServedModel, config: ServerConfig):
    """``async (file, files) -> [(3, H, W) normalised image]``: one request's images, checked (count, sizes,
    the request's pixel budget: every header first), then decoded and normalised off the event loop."""
    patch, native, pre = int(model.patch_size), model.native_size, model.preprocessing
    mean, std = tuple(float(v) for v in pre.mean), tuple(float(v) for v in pre.std)
    input_pixels = int(pre.input_size) ** 2

    def decode_all(blobs: list[tuple[str, bytes]]) -> list[torch.Tensor]:
        sizes = [_decode(data, label, patch, config.max_side, native, pixels=False) for label, data in blobs]
        total = sum(h * w for h, w in sizes)
        if total > config.max_request_pixels:
            raise Reject(413, f"this request asks for {total:,} pixels of work but this server takes at most "
                              f"{config.max_request_pixels:,} per request (about "
                              f"{config.max_request_pixels // max(input_pixels, 1)} images of "
                              f"{pre.input_size}x{pre.input_size}); split it into several requests")
        images = [_decode(data, label, patch, config.max_side, native) for label, data in blobs]
        if len({im.shape[:2] for im in images}) > 1:
            listed = ", ".join(f"{label}: {im.shape[1]}x{im.shape[0]}" for (label, _), im in zip(blobs, images))
            raise Reject(422, f"all images of a batch must have the same size (width x height), got {listed}")
        return list(normalise(np.stack(images), mean, std))

    async def read(file: UploadFile | None, files: list[UploadFile] | None) -> list[torch.Tensor]:
        parts = ([("file", file)] if file is not None else []) + [("files", f) for f in files or []]
        if not parts:
            raise Reject(422, "no image uploaded: send multipart/form-data with field 'file' (one image) or "
                              "'files' (a batch)")
        if len(parts) > config.max_batch:
            raise Reject(413, f"batch of {len(parts)} images is over this server's limit of {config.max_batch} "
                              "images; split it into several requests")
        blobs = []
        for i, (field, up) in enumerate(parts):
            name = up.filename or f"{field}[{i}]"
            label = f"image {i} ({name})" if len(parts) > 1 else f"image {name!r}"
            blobs.append((label, await up.read()))
        return await run_in_threadpool(decode_all, blobs)

    return read


def _body(kind: str, rows: list[dict], size: tuple[int, int], model: ServedModel) -> dict:
    """The JSON answer: scores (with the class names), or embeddings (with the grid, and the model's own
    logits where it has a head)."""
    if kind == "scores":
        return {"scores": [r["scores"].tolist() for r in rows], "classes": model.classes}
    h, w = size
    patch = int(model.patch_size)
    result = {"embeddings": [r["embeddings"].tolist() for r in rows], "grid": [h // patch, w // patch], "size": [h, w]}
    if "logits" in rows[0]:
        result["logits"] = [r["logits"].tolist() for r in rows]
    return result


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
