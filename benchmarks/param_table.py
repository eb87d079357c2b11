"""Trainable parameters per backbone and method, at the paper's settings (K 16; N 256 for CLIP, 128 otherwise;
224 px; VP pad 30). Random-init models of the real architectures: counts do not depend on the weights.

    python benchmarks/param_table.py      # writes docs/parameters.md
"""
from __future__ import annotations

from pathlib import Path

import open_clip
import timm
import torch
from torchvision.models import vit_b_32

from pgn.adapter_format import adapter_config
from pgn.backbones import OpenCLIPViT, TimmViT, TorchvisionViT
from pgn.model import PromptedClassifier

# (backbone name, factory, classes of the paper dataset used for its released checkpoint, head, N, released count)
ROWS = [
    ("clip-vit-b32", lambda: OpenCLIPViT(open_clip.create_model("ViT-B-32-quickgelu", pretrained=None), name="clip-vit-b32"),
     10, "zeroshot", 256, "1,032,304 (pgn_clip_cifar10.pt)"),
    ("vit-b32", lambda: _tv(), 397, "linear", 128, "669,808 generator + library (pgn_vit_sun397.pt; head not released)"),
    ("dino-vit-s16", lambda: TimmViT(timm.create_model("vit_small_patch16_224.dino", pretrained=False, num_classes=0,
                                                        dynamic_img_size=True), name="dino-vit-s16"),
     100, "linear", 128, "620,656 generator + library (pgn_dino_cifar100.pt; head not released)"),
]
METHODS = ["pgn", "iip", "vp", "linear", "finetune"]


def _tv():
    m = vit_b_32(weights=None)
    m.heads = torch.nn.Identity()
    return TorchvisionViT(m, name="vit-b32")


def count(backbone, method, classes, head, n) -> int:
    options = {"pgn": {"library_size": n, "head": head}, "iip": {"head": head}, "vp": {"head": head}}.get(method, {})
    cfg = adapter_config(backbone, method, [str(i) for i in range(classes)], img_size=224, **options)
    model = PromptedClassifier.from_config(cfg, backbone)
    return model.num_trainable()  # fine-tuning trains its own copy: the shared backbone stays frozen


def main() -> None:
    lines = ["# Trainable parameters at the paper's settings", "",
             "Command: `python benchmarks/param_table.py`. K = 16 prompts; N = 256 library tokens for CLIP, 128 "
             "otherwise; 224 px; VP frame 30 px. CLIP's head is its frozen text tower (zero parameters) for pgn, iip "
             "and vp; the linear probe and fine-tuning train a linear head. Other backbones train a linear head over "
             "the classes of the dataset their released checkpoint was trained on (shown).", "",
             "| backbone (classes) | " + " | ".join(METHODS) + " | released checkpoint (paper's code) |",
             "|---|" + "---|" * (len(METHODS) + 1)]
    with torch.device("cpu"):
        for name, factory, classes, head, n, released in ROWS:
            torch.manual_seed(0)
            bb = factory()
            counts = [count(bb, m, classes, head, n) for m in METHODS]
            lines.append(f"| {name} ({classes}) | " + " | ".join(f"{c:,}" for c in counts) + f" | {released} |")
            print(lines[-1], flush=True)
    Path("docs").mkdir(exist_ok=True)
    Path("docs/parameters.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
