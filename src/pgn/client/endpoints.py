"""Where the unmodified model runs, as the client sees it: canvases in, class scores or embeddings out.

An *endpoint* takes (B, H, W, 3) uint8 RGB canvases and answers (B, C) scores of the model's own
head, or (B, F) embeddings for an exported linear head. Three kinds:

* :class:`PgnServeEndpoint`: ``pgn serve`` (PNG uploads, ``/classify`` and ``/embed``);
* :class:`OpenInferenceEndpoint`: any server that speaks the Open Inference Protocol's REST API
  (``POST /v2/models/{name}/infer``: KServe, Seldon MLServer, NVIDIA Triton, TorchServe's KServe
  mode), with a configurable tensor format: ``uint8-hwc`` (the canvas as it is) or ``float-chw``
  (normalised on the client with the adapter's mean and std, for models exported without their
  preprocessing);
* :class:`CallableEndpoint`: any Python function ``canvases -> scores`` (or embeddings), e.g. a few
  lines around a vendor's vision API.

Only canvases cross: nothing of the adapter reaches the model.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import EndpointError, PGNError

__all__ = ["CallableEndpoint", "Endpoint", "OpenInferenceEndpoint", "PgnServeEndpoint", "TENSOR_FORMATS", "endpoint"]

KINDS = ("pgn", "oip")
TENSOR_FORMATS = ("uint8-hwc", "float-chw")  # how a canvas travels as an OIP tensor (not pgn.layouts)
# The Open Inference Protocol's numeric tensor datatypes (BYTES, strings, is not an answer pgn can read).
NUMERIC_DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
                     "FP64", "BF16")


def http_client(url: str, timeout: float):
    """An ``httpx.Client`` for ``url`` that never follows redirects, or one line saying the URL is malformed."""
    import httpx

    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise PGNError(f"the API URL {url!r} must start with http:// or https://")
    try:
        return httpx.Client(base_url=url, timeout=timeout, follow_redirects=False)
    except (httpx.InvalidURL, ValueError) as e:
        raise PGNError(f"the API URL {url!r} is malformed ({e})") from None


class Endpoint:
    """A model behind an API: ``scores`` / ``embeddings`` of (B, H, W, 3) uint8 canvases."""

    kind = "?"
    url = ""

    def scores(self, canvases: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, C) scores of the model's own head."""
        raise PGNError(f"{self.url or self.kind} answers embeddings only; this adapter needs class scores")

    def embeddings(self, canvases: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, F) embeddings, for the adapter's exported head."""
        raise PGNError(f"{self.url or self.kind} answers class scores only; this adapter's head needs embeddings")

    def classes(self) -> list[str] | None:
        """The names of the score columns, where the endpoint says them (None: it does not)."""
        return None

    def template(self) -> str | None:
        """The zero-shot prompt template its scores read, where it says one."""
        return None

    def close(self) -> None:
        pass


class PgnServeEndpoint(Endpoint):
    """``pgn serve`` at ``url``: canvases travel as PNG files."""

    kind = "pgn"

    def __init__(self, url: str, timeout: float = 60):
        from .pgn_serve import EmbeddingClient

        self.url = url
        self.client = EmbeddingClient(url, timeout=timeout)

    @staticmethod
    def _pngs(canvases: np.ndarray) -> list[bytes]:
        from ..input_adapter import InputAdapter

        return InputAdapter.png_bytes(canvases)

    def scores(self, canvases):
        return np.asarray(self.client.classify_png(self._pngs(canvases)), dtype=np.float32)

    def scores_of_pngs(self, pngs: list[bytes]) -> np.ndarray:
        return np.asarray(self.client.classify_png(pngs), dtype=np.float32)

    def embeddings(self, canvases):
        emb, _ = self.client.embed_png(self._pngs(canvases))
        return np.asarray(emb, dtype=np.float32)

    def embeddings_of_pngs(self, pngs: list[bytes]) -> np.ndarray:
        emb, _ = self.client.embed_png(pngs)
        return np.asarray(emb, dtype=np.float32)

    def classes(self):
        return self.client.info().get("classes")

    def template(self):
        return self.client.info().get("template")

    def close(self):
        self.client.close()


class OpenInferenceEndpoint(Endpoint):
    """A model served over the Open Inference Protocol (REST), e.g. KServe, MLServer or Triton.

    ``model``: the model's name on the server; ``input_name``: its input tensor; ``tensor_format``:
    ``uint8-hwc`` sends (B, H, W, 3) UINT8 as the canvas is, ``float-chw`` sends (B, 3, H, W) FP32
    normalised with ``mean``/``std``; ``output``: the output tensor to read (default: the first);
    ``answers``: ``scores`` (the model's own head), ``embeddings``, or None (whatever the output is,
    for the adapter to read as it needs); ``class_names``: the names of the
    score columns, where the caller knows them (the protocol has no standard field for them).
    """

    kind = "oip"

    def __init__(self, url: str, model: str, *, input_name: str = "input", tensor_format: str = "uint8-hwc",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 output: str | None = None, answers: str | None = None, class_names: Sequence[str] | None = None,
                 timeout: float = 60):
        if tensor_format not in TENSOR_FORMATS:
            raise PGNError(f"unknown tensor format {tensor_format!r}; choose {' or '.join(TENSOR_FORMATS)}")
        if tensor_format == "float-chw" and (mean is None or std is None):
            raise PGNError("tensor format float-chw normalises on the client: give the model's mean and std")
        if answers not in (None, "scores", "embeddings"):
            raise PGNError(f"answers must be scores or embeddings, got {answers!r}")
        self.url, self.model, self.input_name, self.tensor_format = url.rstrip("/"), model, input_name, tensor_format
        self.mean = None if mean is None else np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
        self.std = None if std is None else np.asarray(std, np.float32).reshape(1, 3, 1, 1)
        self.output, self.answers = output, answers
        self._classes = None if class_names is None else list(class_names)
        self.deadline = float(timeout)
        self._http = http_client(self.url, timeout)

    def _post(self, body: dict) -> dict:
        from .wire import request_json

        path = f"/v2/models/{self.model}/infer"
        return request_json(self._http, "POST", path, json=body, where=f"{self.url}{path}", deadline=self.deadline,
                            unreachable="start the inference server, or check the URL")

    def infer(self, canvases: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> the output tensor, (B, ...) float32 (finite numbers, checked)."""
        from .wire import _finite

        canvases = np.asarray(canvases)
        if canvases.dtype != np.uint8 or canvases.ndim != 4 or canvases.shape[-1] != 3:
            raise PGNError(f"canvases must be (B, H, W, 3) uint8, got {canvases.dtype} {canvases.shape}")
        if self.tensor_format == "uint8-hwc":
            tensor, datatype = canvases, "UINT8"
        else:
            chw = canvases.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
            tensor, datatype = (chw - self.mean) / self.std, "FP32"
        body = {"inputs": [{"name": self.input_name, "shape": list(tensor.shape), "datatype": datatype,
                            "data": tensor.reshape(-1).tolist()}]}
        where = f"{self.url} (model {self.model!r})"
        outputs = self._post(body).get("outputs")
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise EndpointError(f"{where} answered 'outputs' that is not a list of tensors; is it an Open Inference "
                           "Protocol server?")
        if not outputs:
            raise EndpointError(f"{where} answered no outputs")
        chosen = outputs[0] if self.output is None else next((o for o in outputs if o.get("name") == self.output),
                                                             None)
        if chosen is None:
            raise EndpointError(f"{where} has no output {self.output!r}; it answers "
                           f"{', '.join(str(o.get('name')) for o in outputs)}")
        name, shape, datatype, data = chosen.get("name"), chosen.get("shape"), chosen.get("datatype"), chosen.get("data")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise EndpointError(f"{where}: output {name!r} has no valid 'shape' (got {str(shape)[:60]})")
        if datatype not in NUMERIC_DATATYPES:
            raise EndpointError(f"{where}: output {name!r} has datatype {str(datatype)[:20]!r}; pgn reads numbers "
                           f"({', '.join(NUMERIC_DATATYPES)})")
        if not isinstance(data, list):
            raise EndpointError(f"{where}: output {name!r} has no 'data' list")
        try:
            values = np.asarray(data, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise EndpointError(f"{where}: output {name!r} holds values that are not numbers") from None
        if values.size != int(np.prod(shape)):
            raise EndpointError(f"{where}: output {name!r} holds {values.size} values, not its shape {shape}")
        return _finite(values.reshape(shape), where, f"output {name!r}")

    def scores(self, canvases):
        if self.answers == "embeddings":
            return super().scores(canvases)
        return self.infer(canvases)

    def embeddings(self, canvases):
        if self.answers == "scores":
            return super().embeddings(canvases)
        return self.infer(canvases)

    def classes(self):
        return self._classes

    def close(self):
        self._http.close()


class CallableEndpoint(Endpoint):
    """``fn(canvases (B, H, W, 3) uint8) -> (B, C) scores`` (or ``answers="embeddings"``): any API in a few lines."""

    kind = "callable"

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], answers: str = "scores",
                 class_names: Sequence[str] | None = None):
        if answers not in ("scores", "embeddings"):
            raise PGNError(f"answers must be scores or embeddings, got {answers!r}")
        self.fn, self.answers = fn, answers
        self._classes = None if class_names is None else list(class_names)
        self.url = getattr(fn, "__name__", "a callable")

    def _call(self, canvases):
        from .wire import to_table

        out = to_table(self.fn(np.asarray(canvases)), self.url, "values")
        if out.shape[0] != len(canvases):
            raise EndpointError(f"{self.url} answered {out.shape[0]} rows of values for {len(canvases)} images; a model "
                           "answers one row per image")
        return out

    def scores(self, canvases):
        return self._call(canvases) if self.answers == "scores" else super().scores(canvases)

    def embeddings(self, canvases):
        return self._call(canvases) if self.answers == "embeddings" else super().embeddings(canvases)

    def classes(self):
        return self._classes


def endpoint(url: str, kind: str = "pgn", **options) -> Endpoint:
    """The endpoint of ``kind`` (``pgn``: pgn serve; ``oip``: Open Inference Protocol) at ``url``."""
    if kind == "pgn":
        return PgnServeEndpoint(url, **options)
    if kind == "oip":
        if not options.get("model"):
            raise PGNError("an Open Inference Protocol endpoint needs the model's name on the server (`model`)")
        return OpenInferenceEndpoint(url, **options)
    raise PGNError(f"unknown API kind {kind!r}; choose {' or '.join(KINDS)}")
