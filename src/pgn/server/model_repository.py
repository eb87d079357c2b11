"""The unmodified model as ONNX in a Triton/KServe model repository: how a user serves the *model* at scale.

    export_model("efficientnet-lite0", "models")      # models/efficientnet-lite0/1/model.onnx + config.pbtxt

The adapter stays on the client (:class:`~pgn.client.RemoteClassifier`); the server runs only the frozen
model's own forward. The graph takes what the adapter sends, (B, H, W, 3) UINT8 RGB canvases (input
``input``), applies the model's own normalisation, and answers ``embeddings`` (a ViT's feature) or ``scores``
(a classifier's own head). The layout is the one NVIDIA Triton reads (``NAME/config.pbtxt``,
``NAME/1/model.onnx``) and KServe's Triton and ONNX runtimes serve; both speak the Open Inference Protocol,
which :class:`~pgn.client.endpoints.OpenInferenceEndpoint` calls.

Every export is checked before it is kept: ONNX Runtime runs random canvases through the file and the
answers must equal the PyTorch forward's within ``tolerance`` (relative to the answers' scale); the
measured error is written into ``pgn_model.json`` beside the model.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..backbones import FrozenModel, create_backbone
from ..errors import PGNError
from ..files import write_json

__all__ = ["export_model", "ExportedGraph", "TOLERANCE"]

TOLERANCE = 1e-4  # max |onnx - torch| / max |torch| on random canvases, float32 (measured: ~1e-6)
OPSET = 17


class ExportedGraph(nn.Module):
    """(B, H, W, 3) uint8 canvases -> the backbone's answer, normalisation included (what the server runs).

    A ViT's positional embedding is computed for the export's grid once and kept as a constant, so the
    graph needs no resampling operator (the answer is bit-identical: the same sums in another order of
    grouping that float addition keeps exact, ``(0 + p) + e == e + p``).
    """

    def __init__(self, backbone: FrozenModel, img_size: int):
        super().__init__()
        self.backbone = backbone
        pre = backbone.preprocessing
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.takes_tokens = backbone.takes_tokens
        if self.takes_tokens:
            grid = backbone.grid_for(img_size, img_size)
            with torch.no_grad():
                zeros = torch.zeros(1, *grid, backbone.width)
                self.register_buffer("position", backbone.add_position(zeros))  # (1, prefix + h*w, D)
            self.prefix = self.position.shape[1] - grid[0] * grid[1]

    def forward(self, canvases: torch.Tensor) -> torch.Tensor:
        x = canvases.permute(0, 3, 1, 2).to(torch.float32).div(255)  # as pgn.pixels.from_uint8
        x = x.sub(self.mean).div(self.std)
        if not self.takes_tokens:  # a classifier of pixels: its own forward, its scores
            return self.backbone(x)
        grid = self.backbone.embed_patches(x)                            # (B, h, w, D)
        B, h, w, D = grid.shape
        tokens = torch.cat([grid.new_zeros(B, self.prefix, D), grid.reshape(B, h * w, D)], dim=1)
        return self.backbone.encode(self.position + tokens)


class _mha_fastpath:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        self.before = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(self.enabled)

    def __exit__(self, *exc):
        torch.backends.mha.set_fastpath_enabled(self.before)


def _config_pbtxt(name: str, img_size: int, output: str, width: int) -> str:
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
            f'input [\n  {{\n    name: "input"\n    data_type: TYPE_UINT8\n    dims: [ -1, {img_size}, {img_size}, 3 ]\n  }}\n]\n'
            f'output [\n  {{\n    name: "{output}"\n    data_type: TYPE_FP32\n    dims: [ -1, {width} ]\n  }}\n]\n')


def export_model(backbone: str | FrozenModel, out_dir: str | Path, *, name: str | None = None,
                 img_size: int | None = None, weights: str | None = None, tolerance: float = TOLERANCE,
                 samples: int = 4) -> Path:
    """Write ``backbone``'s unmodified forward as ``out_dir/NAME/1/model.onnx`` with its Triton config.

    ``img_size``: the canvas side the server accepts (default: the model's native input). Returns the model's
    folder. The export is refused, and nothing is left behind, if ONNX Runtime's answers differ from
    PyTorch's by more than ``tolerance`` (relative).
    """
    import onnxruntime as ort

    bb = create_backbone(backbone, weights) if isinstance(backbone, str) else backbone
    bb = bb.float().eval()
    size = int(img_size or bb.preprocessing.input_size)
    if size < bb.patch_size or size % bb.patch_size:
        raise PGNError(f"`img_size` {size} is not a positive multiple of {bb.name}'s patch size {bb.patch_size}")
    name = name or bb.name.replace(":", "-").replace("/", "-")
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise PGNError(f"model name {name!r}: use letters, digits, '-', '_' and '.' (a folder of the repository)")
    out_dir = Path(out_dir)
    target = out_dir / name
    if target.exists():
        raise PGNError(f"{target} exists already; remove it or choose another `name`")
    output = "embeddings" if bb.takes_tokens else "scores"
    graph = ExportedGraph(bb, size).eval()
    rng = np.random.default_rng(0)
    canvases = rng.integers(0, 256, (samples, size, size, 3), dtype=np.uint8)
    with torch.inference_mode():
        from ..pixels import from_uint8

        expected = bb(from_uint8(canvases, bb.preprocessing.mean, bb.preprocessing.std)).float().numpy()
    from ..files import atomic_dir

    with atomic_dir(target) as tmp:  # readable by the server's user; a kill leaves nothing half-written behind
        (tmp / "1").mkdir()
        onnx_path = tmp / "1" / "model.onnx"
        import warnings

        with warnings.catch_warnings(), torch.no_grad(), _mha_fastpath(False):
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            # (torchvision's attention otherwise takes a fused kernel in inference that ONNX has no operator for)
            torch.onnx.export(graph, (torch.from_numpy(canvases),), str(onnx_path), dynamo=False,
                              input_names=["input"], output_names=[output], dynamic_axes={"input": {0: "batch"}},
                              opset_version=OPSET)
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": canvases})[0]
        error = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))
        if not error <= tolerance:
            raise PGNError(f"the ONNX export of {bb.name} answers differently from PyTorch (relative error "
                           f"{error:.2e} > {tolerance:g}); it was not written")
        (tmp / "config.pbtxt").write_text(_config_pbtxt(name, size, output, int(got.shape[1])))
        write_json(tmp / "pgn_model.json", {
            "format": "pgn-model-repository", "version": 1, "backbone": bb.name, "weights": weights,
            "img_size": size, "input": "input", "input_layout": "uint8-hwc", "output": output,
            "output_width": int(got.shape[1]), "mean": list(bb.preprocessing.mean), "std": list(bb.preprocessing.std),
            "patch_size": bb.patch_size, "opset": OPSET, "onnx_vs_torch_relative_error": error,
            "classes": list(getattr(bb, "source_classes", None) or []) or None})
    return target


def read_model_info(model_dir: str | Path) -> dict:
    """What :func:`export_model` recorded beside the model (``pgn_model.json``)."""
    path = Path(model_dir) / "pgn_model.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PGNError(f"{model_dir} is not a model exported by pgn ({path.name}: {e}); run `pgn export-model`") from None
