"""What several test modules share: tiny models, the CLI as a user runs it, small data, configs, ports.

Test modules (and conftest.py's fixtures) import from here, never from each other or from conftest.
"""
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import Dataset

from pgn.adapter_format import AdapterConfig
from pgn.backbones import OpenCLIPViT, TimmViT, TorchvisionViT
from pgn.data import DataSpec
from pgn.methods import method_config_of
from pgn.training import TrainConfig

# Checkpoints released with the paper: next to the repository on our machines, anywhere with
# PGN_OFFICIAL_DIR. A clone without them skips (and says why) the tests that read them.
OFFICIAL = Path(os.environ.get("PGN_OFFICIAL_DIR", Path(__file__).resolve().parents[2] / "shared" / "official_pgn"))
needs_official = pytest.mark.skipif(not OFFICIAL.is_dir(), reason=f"released checkpoints not found in {OFFICIAL} "
                                    "(set PGN_OFFICIAL_DIR)")


# The tiny random-init backbones the tests build, one builder per family. Each seeds torch's global generator
# (what a test draws next depends on it), so a test that keeps its seed keeps its numbers. The library's own
# registered ``test-vit-*`` backbones (src/pgn/backbones/testing.py) are for building by name (the CLI).


def make_tiny_vit(seed: int = 0, name: str = "timm:test_vit", **kw) -> TimmViT:
    """timm's ``test_vit`` (patch 16, width 64, 6 blocks, MLP ratio 3), random init, any image size; ``kw`` goes to
    ``timm.create_model`` (``num_classes``, or ``patch_size``/``embed_dim``/``depth``/... for other tiny ViTs)."""
    torch.manual_seed(seed)
    vit = timm.create_model("test_vit", pretrained=False, dynamic_img_size=True, **{"num_classes": 0, **kw})
    return TimmViT(vit, name=name)


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


def adapter_cfg(method: str, backbone, k: int = 4, dataset: str = "random") -> AdapterConfig:
    options = {"pgn": dict(num_prompts=k, library_size=8, generator_size=64), "iip": dict(num_prompts=k),
               "vp": dict(pad=8)}.get(method, {})
    return AdapterConfig(method_config=method_config_of(method, **options), backbone=backbone.name,
                         backbone_width=backbone.width, class_names=["a", "b", "c"], img_size=64, dataset=dataset)


ALL_TRAINED = ["pgn", "iip", "vp", "linear", "finetune"]


def quiet(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "batch_size": 8, "progress": False, **kw})


SIZE = 96  # native input of the tiny CLIP and torchvision ViTs below (patch 16: a 6x6 grid)
CLASSES = [str(i) for i in range(10)]


def make_tiny_clip() -> OpenCLIPViT:
    """open_clip's CLIP (vision: patch 16, width 64, 2 blocks, SIZE x SIZE only; text: 1 block), seed 0."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16,
                                                        image_size=SIZE),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
                 quick_gelu=True)
    return OpenCLIPViT(model.eval(), name="clip:small", tokenizer=open_clip.get_tokenizer("ViT-B-32"))


def make_tiny_torchvision_vit(classes: int = 5) -> TorchvisionViT:
    """torchvision's VisionTransformer (patch 16, width 64, 2 blocks, SIZE x SIZE only, ``classes`` outputs), seed 1."""
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


# --- Data-parallel training: tests/test_distributed.py and the torchrun worker it launches (which imports this
# module, never a test module) build the same runs from these. ---
DIST_WORLD = 2                   # processes
DIST_N_TRAIN, DIST_N_TEST = 24, 7  # 7 test images: the ranks' shards are uneven (4 + 3)
DIST_BATCH = 4                   # per process: 2 x 4 vs 1 x 8, three steps per epoch
DIST_EPOCHS = 2
DIST_OTHER_METHODS = {"iip": 0.1, "vp": 0.1, "finetune": 0.01}  # method: lr


class LabelledImages(Dataset):
    """Deterministic images whose label shows in them (class c brightens channel c)."""

    def __init__(self, n: int, seed: int, size: int = 64, classes: int = 3):
        g = torch.Generator().manual_seed(seed)
        self.targets = torch.arange(n) % classes
        self.x = torch.randn(n, 3, size, size, generator=g) * 0.5
        self.x[torch.arange(n), self.targets] += 0.5

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.targets[i])


class FailAt(Dataset):
    """Raises (or hangs, like a dead peer) on the ``fail_at``-th sample read."""

    def __init__(self, base, fail_at: int, rank: int, hang: bool = False):
        self.base, self.fail_at, self.rank, self.hang, self.reads = base, fail_at, rank, hang, 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads == self.fail_at:
            if self.hang:
                time.sleep(600)
            raise RuntimeError(f"injected failure on rank {self.rank}")
        return self.base[i]


class Poisoned(LabelledImages):
    """NaN images: the loss of whichever rank reads them becomes NaN."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x * float("nan"), y


def labelled_data(train=None) -> DataSpec:
    return DataSpec(name="labelled", class_names=["a", "b", "c"],
                    train=train if train is not None else LabelledImages(DIST_N_TRAIN, 0),
                    test=LabelledImages(DIST_N_TEST, 1))


def exact_config(batch: int, epochs: int = DIST_EPOCHS, **kw) -> TrainConfig:
    # SGD with momentum, no warm-up, no clipping, no augmentation: every step is exactly reproducible.
    return TrainConfig(**{"epochs": epochs, "batch_size": batch, "lr": 0.1, "warmup_epochs": 0.0,
                          "grad_clip": None, "progress": False, **kw})


def fresh_classifier(method: str):
    """(classifier, adapter config) of ``method`` on the tiny ViT: the same initial weights in every process."""
    from pgn.model import PromptedClassifier

    vit = make_tiny_vit()  # seeds torch
    acfg = adapter_cfg(method, vit, dataset="labelled")
    return PromptedClassifier.from_config(acfg, vit), acfg


KSERVE_SERVER = Path(__file__).parent / "servers" / "kserve_vit.py"


def start_server(cmd: list, ready: str, what: str, env: dict | None = None, tries: int = 600) -> subprocess.Popen:
    """Starts ``cmd`` and waits until ``ready`` (a URL) answers 200; the process, or the test fails with its log.

    The server's log goes to a temporary file, never a pipe: a pipe nobody reads fills after about 64 KiB of
    access log and the server stalls mid-test."""
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT, text=True, env=env)

    def tail() -> str:
        log.seek(0)
        return log.read()[-3000:]

    for _ in range(tries):
        if proc.poll() is not None:
            pytest.fail(f"{what} exited: " + tail())
        try:
            if httpx.get(ready, timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"{what} did not come up: " + tail())


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def start_pgn_serve(backbone: str, weights: Path, *extra, env: dict | None = None, tries: int = 600):
    """``pgn serve`` of ``backbone`` from ``weights`` (fp32) on a free loopback port; (the process, its URL)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server([sys.executable, "-m", "pgn", "serve", "--backbone", backbone, "--weights", weights,
                         "--port", port, "--precision", "fp32", *extra], url + "/health",
                        f"pgn serve --backbone {backbone}", env=env, tries=tries)
    return proc, url


def start_kserve(backbone: str, name: str, answer: str):
    """A real KServe server (tests/servers/kserve_vit.py) of ``backbone`` on a free loopback port, answering
    ``answer`` (scores or embeddings) as model ``name``; (the process, its URL). Skips where kserve is absent."""
    pytest.importorskip("kserve", reason="kserve is not installed (the Makefile installs it with the test extras)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server([sys.executable, KSERVE_SERVER, backbone, port, answer, name],
                        f"{url}/v2/models/{name}/ready", "the KServe server")
    return proc, url
