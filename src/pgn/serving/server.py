"""A plain inference server for a frozen timm ViT: images in, CLS embeddings out.

The server knows nothing about prompts. For input-space deployment a client composes
the prompted canvas itself and sends it here; the server runs the backbone's own,
unmodified forward::

    feats = vit.forward_features(normalise(image))   # timm's forward, final norm included
    embedding = feats[:, 0]                          # the CLS token
    logits = vit.forward_head(feats)                 # only if the model has a classifier head

Endpoints (every error answers ``{"detail": "<one line>"}``):

``GET /health``  ``{"status": "ok", "backbone": NAME}``
``GET /info``    backbone name, description, patch_size, width, mean, std, input_size, limits
``POST /embed``  multipart field ``file`` (one image) or ``files`` (a batch of same-size images),
                 PNG or JPEG, any mode (converted to RGB), NOT resized: height and width must be
                 positive multiples of the patch size and at most ``max_side``. Answers
                 ``{"embeddings": [[float, ...], ...], "grid": [H/P, W/P], "size": [H, W]}``
                 plus ``"logits"`` when the model has a head. Floats are the float32 outputs
                 written exactly (float32 -> Python float -> shortest round-trip JSON).

Status codes: 413 upload over ``max_upload_bytes`` (the whole request body) or batch over
``max_batch``; 415 not a PNG/JPEG or corrupt; 422 wrong image size, mixed sizes in a batch or
no image field; 400 malformed multipart; 500 only for a model failure (the server keeps running).
"""
from __future__ import annotations

import io
import ipaddress
import socket
import sys
import threading
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from ..backbones.timm_vit import TimmViT
from ..data.base import check_pixels
from ..errors import PGNError

__all__ = ["create_app", "serve", "DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_MAX_SIDE", "DEFAULT_MAX_BATCH"]

DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
DEFAULT_MAX_SIDE = 1024
DEFAULT_MAX_BATCH = 64
_IMAGE_FIELDS = ("file", "files")
_FORMATS = ("PNG", "JPEG")
_READ_CHUNK = 64 * 1024


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


def _decode(data: bytes, label: str, patch: int, max_side: int) -> np.ndarray:
    """PNG/JPEG bytes -> (H, W, 3) uint8 RGB, refusing wrong sizes before decoding any pixels."""
    if not data:
        raise _Reject(415, f"{label} is empty; send a PNG or JPEG image")
    try:
        # Image.open only parses the header: the size check below runs before any pixel is decoded,
        # so a small file that claims a huge canvas (decompression bomb) is refused cheaply.
        with Image.open(io.BytesIO(data), formats=_FORMATS) as img:
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
            if w <= 0 or h <= 0 or w % patch or h % patch:
                raise _Reject(
                    422,
                    f"{label} is {w}x{h} pixels (width x height) but both sides must be positive multiples of the "
                    f"patch size {patch} (at most {max_side}); nearest valid width {_valid_sizes_hint(w, patch, max_side)}, "
                    f"height {_valid_sizes_hint(h, patch, max_side)}; the server does not resize")
            img.load()
            rgb = img if img.mode == "RGB" else img.convert("RGB")
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
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).to(torch.float32).div(255)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return x.sub(m).div(s).contiguous()


def create_app(
    backbone: TimmViT,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_side: int = DEFAULT_MAX_SIDE,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> FastAPI:
    """The FastAPI app serving ``backbone``'s unmodified forward (see the module docstring)."""
    if not isinstance(backbone, TimmViT):
        raise PGNError(f"the embedding server needs a timm ViT backbone, got {type(backbone).__name__}")
    patch = int(backbone.patch_size)
    if max_side < patch:
        raise PGNError(f"max_side {max_side} is smaller than the patch size {patch}; raise it")
    if max_upload_bytes <= 0 or max_batch <= 0:
        raise PGNError("max_upload_bytes and max_batch must be positive")
    max_upload_bytes, max_side, max_batch = int(max_upload_bytes), int(max_side), int(max_batch)

    vit = backbone.vit
    backbone.eval()
    pre = backbone.preprocessing
    mean = tuple(float(v) for v in pre.mean)
    std = tuple(float(v) for v in pre.std)
    num_classes = int(getattr(vit, "num_classes", 0) or 0)
    param = next(vit.parameters())
    device, dtype = param.device, param.dtype
    lock = threading.Lock()  # one forward at a time: concurrent requests would oversubscribe the cores
    pixel_budget = max_side * max_side  # pixels per forward chunk (bounds peak activation memory)

    info = {
        "backbone": backbone.name,
        "description": getattr(backbone, "description", ""),
        "patch_size": patch,
        "width": int(backbone.width),
        "feature_dim": int(backbone.feature_dim),
        "mean": list(mean),
        "std": list(std),
        "input_size": int(pre.input_size),
        "num_classes": num_classes,
        "max_upload_bytes": max_upload_bytes,
        "max_side": max_side,
        "max_batch": max_batch,
    }

    app = FastAPI(
        title="pgn embedding server",
        description=f"Unmodified forward of {backbone.name}: images in, CLS embeddings out.",
        version="1",
    )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": _one_line(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

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
        return {"status": "ok", "backbone": backbone.name}

    @app.get("/info")
    def get_info() -> dict:
        return dict(info)

    def run_model(images: list[np.ndarray]) -> dict:
        batch = np.stack(images)  # (B, H, W, 3) uint8
        B, H, W, _ = batch.shape
        x_all = normalise(batch, mean, std)
        per = max(1, pixel_budget // (H * W))
        embs, logits = [], []
        with lock, torch.inference_mode():
            for i in range(0, B, per):
                x = x_all[i:i + per].to(device=device, dtype=dtype)
                feats = vit.forward_features(x)
                embs.append(feats[:, 0].float().cpu())
                if num_classes > 0:
                    out = vit.forward_head(feats)
                    if out.ndim == 3:  # global_pool='' keeps every token; the CLS row is the prediction
                        out = out[:, 0]
                    logits.append(out.float().cpu())
        emb = torch.cat(embs)
        if not torch.isfinite(emb).all():
            raise _Reject(500, "the model produced non-finite embeddings for this input")
        result = {"embeddings": emb.tolist(), "grid": [H // patch, W // patch], "size": [H, W]}
        if num_classes > 0:
            result["logits"] = torch.cat(logits).tolist()
        return result

    def decode_and_run(blobs: list[tuple[str, bytes]]) -> dict:
        images = [_decode(data, label, patch, max_side) for label, data in blobs]
        sizes = {im.shape[:2] for im in images}
        if len(sizes) > 1:
            listed = ", ".join(f"{label}: {im.shape[1]}x{im.shape[0]}" for (label, _), im in zip(blobs, images))
            raise _Reject(422, f"all images of a batch must have the same size (width x height), got {listed}")
        return run_model(images)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                raise _Reject(400, f"invalid Content-Length header {declared!r}") from None
            if n > max_upload_bytes:
                raise _Reject(413, f"upload of {n} bytes is over this server's limit of {max_upload_bytes} bytes; "
                                   "send smaller images or fewer per request")
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > max_upload_bytes:  # the header may be missing (chunked) or lie
                raise _Reject(413, f"upload is over this server's limit of {max_upload_bytes} bytes; "
                                   "send smaller images or fewer per request")
        return bytes(buf)

    async def parse_files(request: Request, body: bytes) -> list[tuple[str, bytes]]:
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise _Reject(422, "no image uploaded: send multipart/form-data with field 'file' (one image) "
                               "or 'files' (a batch)")
        form_request = Request(request.scope, receive=replay)
        try:
            form = await form_request.form(max_files=max_batch + 1, max_fields=100)
        except (StarletteHTTPException, MultiPartException) as e:
            why = str(getattr(e, "detail", None) or getattr(e, "message", e))
            if why.startswith("Too many files"):
                raise _Reject(413, f"batch is over this server's limit of {max_batch} images; "
                                   "split it into several requests") from None
            raise _Reject(400, f"malformed multipart body: {why}") from None
        try:
            parts = []
            for field in _IMAGE_FIELDS:
                for value in form.getlist(field):
                    if not isinstance(value, UploadFile):
                        raise _Reject(422, f"field {field!r} must be a file upload, not a text value")
                    parts.append((field, value))
            if not parts:
                present = sorted(set(form.keys()))
                raise _Reject(422, "no image uploaded: send multipart/form-data with field 'file' (one image) or "
                                   "'files' (a batch)" + (f"; got fields {present}" if present else ""))
            if len(parts) > max_batch:
                raise _Reject(413, f"batch of {len(parts)} images is over this server's limit of {max_batch} images; "
                                   "split it into several requests")
            blobs = []
            for i, (field, up) in enumerate(parts):
                name = up.filename or f"{field}[{i}]"
                label = f"image {i} ({name})" if len(parts) > 1 else f"image {name!r}"
                blobs.append((label, await up.read()))
            return blobs
        finally:
            await form.close()

    @app.post(
        "/embed",
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "properties": {
                "file": {"type": "string", "format": "binary", "description": "one PNG/JPEG image"},
                "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                          "description": "a batch of same-size PNG/JPEG images"},
            },
        }}}}},
    )
    async def embed(request: Request):
        try:
            body = await read_body(request)
            blobs = await parse_files(request, body)
            del body
            result = await run_in_threadpool(decode_and_run, blobs)
        except _Reject as r:
            return _error(r.status, r.detail)
        return JSONResponse(result)

    return app


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves so a busy port is a one-line PGNError, not a log + exit."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise PGNError(f"cannot resolve host {host!r} ({e.strerror}); pass an address such as 127.0.0.1 to --host") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise PGNError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another port with --port") from None
    sock.set_inheritable(True)
    return sock


def serve(
    backbone_name: str,
    weights: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_side: int = DEFAULT_MAX_SIDE,
    log_level: str = "info",
    device: str = "cpu",
) -> None:
    """Build ``backbone_name`` on ``device`` and serve it with uvicorn until interrupted (blocks)."""
    import uvicorn

    from ..backbones import create_backbone

    backbone = create_backbone(backbone_name, weights=weights)
    if not isinstance(backbone, TimmViT):
        raise PGNError(f"{backbone_name} is not a timm ViT backbone; the embedding server serves timm ViTs only")
    backbone.to(device)  # the app runs its forward where the backbone's weights are
    app = create_app(backbone, max_upload_bytes=max_upload_bytes, max_side=max_side)
    if not _is_loopback(host):
        print(f"warning: serving on {host}, which is not a loopback address: anyone who can reach this machine "
              "can use the model (there is no authentication); use --host 127.0.0.1 to keep it local",
              file=sys.stderr, flush=True)
    sock = _bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {backbone.name} on http://{shown}:{sock.getsockname()[1]} "
          f"(patch {backbone.patch_size}, sides up to {max_side}, uploads up to {max_upload_bytes} bytes)",
          flush=True)
    config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("debug", "trace"))
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
