"""What several test modules share: the CLI as a user runs it, small data, configs, ports.

Test modules import from here, never from each other.
"""
import io
import os
import socket
import subprocess
import sys

import httpx
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pgn.adapter import AdapterConfig
from pgn.backbones import OpenCLIPViT, TorchvisionViT
from pgn.data import DataSpec
from pgn.methods import method_config_of
from pgn.training import TrainConfig


def pgn(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pgn", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def one_line_error(result):
    assert result.returncode != 0, result.stdout
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("pgn: error:"), result.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RandomImages(Dataset):
    """A small labelled set of random images (labels depend on the image, so it is learnable)."""

    def __init__(self, n: int = 16, size: int = 64, classes: int = 3, seed: int = 0, poison: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.targets = (self.x.mean(dim=(1, 2, 3)) > 0).long() + (self.x[:, 0].mean(dim=(1, 2)) > 0).long()
        self.targets = self.targets.clamp(max=classes - 1)
        self.poison = poison

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        return (x * float("nan") if self.poison else x), int(self.targets[i])


def spec(poison: bool = False) -> DataSpec:
    return DataSpec(name="random", class_names=["a", "b", "c"], train=RandomImages(poison=poison),
                    test=RandomImages(8, seed=1))


def adapter_cfg(method: str, backbone, k: int = 4) -> AdapterConfig:
    options = {"pgn": dict(num_prompts=k, library_size=8, generator_size=64), "iip": dict(num_prompts=k),
               "vp": dict(pad=8)}.get(method, {})
    return AdapterConfig(method_config=method_config_of(method, **options), backbone=backbone.name,
                         backbone_width=backbone.width, class_names=["a", "b", "c"], img_size=64, dataset="random")


ALL_TRAINED = ["pgn", "iip", "vp", "linear", "finetune"]


def quiet(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "batch_size": 8, "progress": False, **kw})


SIZE = 96  # native input of the small CLIP and torchvision ViTs below (patch 16: a 6x6 grid)
CLASSES = [str(i) for i in range(10)]


def small_clip() -> OpenCLIPViT:
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16,
                                                        image_size=SIZE),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
                 quick_gelu=True)
    return OpenCLIPViT(model.eval(), name="clip:small", tokenizer=open_clip.get_tokenizer("ViT-B-32"))


def small_torchvision(classes: int = 5) -> TorchvisionViT:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(1)
    model = VisionTransformer(image_size=SIZE, patch_size=16, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128,
                              num_classes=classes)
    return TorchvisionViT(model.eval(), name="torchvision:small")


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def pixels(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def post(url: str, path: str, images: list[bytes]) -> httpx.Response:
    files = [("files", (f"i{i}.png", b, "image/png")) for i, b in enumerate(images)]
    return httpx.post(url + path, files=files, timeout=120)
