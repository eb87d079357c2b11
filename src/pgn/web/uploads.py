"""What every image upload to a pgn web app goes through (``pgn serve`` and ``pgn app`` share it).

- :class:`BodySizeLimit`: a cap on the whole request body, declared or streamed, answered as JSON.
- :func:`install_error_handlers`: every error as ``{"detail": "<one line>"}`` (FastAPI's own 400s, 413s
  and 422s too), and a failure inside a route as a 500 that leaves the server running.
- :func:`read_image`: PNG/JPEG bytes to an RGB image, with the size checked on the header before any
  pixel is decoded (a small file that claims a huge canvas costs nothing), through pgn's pixel budget
  and the RGB conversion the CLI and the datasets use.
- :class:`Reject`: a client error with its status, raised anywhere below a route and answered by it.
"""
from __future__ import annotations

import io
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.base import check_pixels, pixel_budget, to_rgb
from ..errors import PGNError

__all__ = ["FORMATS", "BodySizeLimit", "Reject", "error", "install_error_handlers", "one_line", "read_image",
           "too_large"]

FORMATS = ("PNG", "JPEG")


class Reject(Exception):
    """A client error to answer with ``status`` and a one-line ``detail``."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def one_line(text: Any, limit: int = 500) -> str:
    s = " ".join(str(text).split())
    return s[:limit] if s else ""


def error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": one_line(detail)}, status_code=status)


def too_large(max_bytes: int) -> str:
    return f"upload is over this server's limit of {max_bytes} bytes; send smaller images or fewer per request"


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413, declared or streamed (chunked).

    A declared ``Content-Length`` over the limit is refused before the app runs; a body that grows past
    it while streaming raises ``HTTPException(413)`` inside the app's read, which the handlers of
    :func:`install_error_handlers` answer as one line of JSON. Nothing past the limit is buffered.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await error(400, f"invalid Content-Length header {declared.decode(errors='replace')!r}")(
                    scope, receive, send)
            if int(declared) > self.max_bytes:
                return await error(413, f"upload of {int(declared)} bytes is over this server's limit of "
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


def install_error_handlers(app: FastAPI, max_bytes: int, fields: str = "'file' or 'files'") -> None:
    """Answer every error of ``app`` as one line of JSON; ``fields`` names the multipart image field(s)."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        detail = too_large(max_bytes) if exc.status_code == 413 else exc.detail
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            detail = f"malformed multipart body: send multipart/form-data with field {fields}"
        return JSONResponse({"detail": one_line(detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, f"invalid request: {where}: {first.get('msg', 'validation failed')}")

    @app.exception_handler(Reject)
    async def _rejected(request: Request, exc: Reject):
        return error(exc.status, exc.detail)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        return error(500, f"internal server error: {type(exc).__name__}: {one_line(exc, 300)}")


def read_image(data: bytes, label: str, *, formats: tuple[str, ...] | None = FORMATS,
               check_size: Callable[[int, int], None] | None = None, decode: bool = True):
    """``data`` (an encoded image) as an RGB ``PIL.Image``, or a :class:`Reject` saying what is wrong.

    ``formats``: the ones accepted (None: any Pillow reads). ``check_size(w, h)`` runs on the header, before
    any pixel is decoded, and may raise a Reject of its own. ``decode=False``: every check on the header
    only, and ``(h, w)`` back.
    """
    shown = " or ".join(formats) if formats else "an image"
    if not data:
        raise Reject(415, f"{label} is empty; send a {shown} image" if formats else f"{label} is empty")
    try:
        # Image.open only parses the header, so the size checks below run before any pixel is decoded.
        with pixel_budget():  # pgn's budget (check_pixels below), not Pillow's own limit
            img = Image.open(io.BytesIO(data), formats=formats)
        with img:
            w, h = img.size
            if check_size is not None:
                check_size(w, h)
            try:
                check_pixels(w, h, label)  # the budget every pgn image decoder shares
            except PGNError as e:
                raise Reject(422, str(e)) from None
            if not decode:
                return h, w
            img.load()
            try:
                return to_rgb(img, label)  # the conversion the CLI and the datasets use: 16-bit and float too
            except PGNError as e:
                raise Reject(415, str(e)) from None
    except Reject:
        raise
    except UnidentifiedImageError:
        raise Reject(415, f"{label} is not a {shown} image" if formats else
                     f"{label} is not an image Pillow can read; send a PNG or JPEG") from None
    except Image.DecompressionBombError:
        raise Reject(422, f"{label} declares too many pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise Reject(415, f"{label} could not be decoded as {shown} ({one_line(e, 200)})") from None
