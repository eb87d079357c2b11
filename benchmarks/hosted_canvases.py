"""What the hosted classifier receives: ELPV cells and the 8-bit canvases of a PGN trained against it.

    python benchmarks/hosted_canvases.py [--run runs/hosted/elpv/pgn-frame/test-lr1.0-seed0] [--out docs/hosted-canvases.png]

The run is one of benchmarks/hosted_classifier.py's (EfficientNet-Lite0, frame layout, pixel library, FLM
label mapping). Each column: a test image as it is, then the canvas the unmodified model is sent (uint8,
what crosses the wire), titled with the task's answer and the ImageNet class the model's scores name.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import pgn
from pgn.data import build_dataset
from pgn.files import atomic_path
from pgn.pixels import to_uint8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=None, help="default: the first seed-0 pgn-frame ELPV run under runs/hosted")
    ap.add_argument("--out", default="docs/hosted-canvases.png")
    ap.add_argument("--images", type=int, default=6)
    args = ap.parse_args()
    run = Path(args.run) if args.run else next(iter(sorted(Path("runs/hosted/elpv/pgn-frame").glob("test-*-seed0"))))
    model = pgn.load(run, device="cpu").eval()
    cfg = model.config
    data = build_dataset(cfg.dataset, img_size=cfg.img_size, mean=cfg.mean, std=cfg.std)
    # Half functional, half defective, the first of each in the test split.
    targets = np.asarray(data.test.targets if hasattr(data.test, "targets") else [y for _, y in data.test])
    picks = [int(i) for c in range(len(cfg.class_names)) for i in np.flatnonzero(targets == c)[:args.images // 2]]
    x = torch.stack([data.test[i][0] for i in picks])
    with torch.inference_mode():
        canvas = model.canvas(x)
        scores = model.backbone(canvas)
        answer = model.head(scores).argmax(-1)
    names = model.backbone.source_classes or [str(i) for i in range(scores.shape[1])]
    images, canvases = to_uint8(x, cfg.mean, cfg.std), to_uint8(canvas, cfg.mean, cfg.std)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(picks), figsize=(2.2 * len(picks), 5.0))
    for j, i in enumerate(picks):
        axes[0, j].imshow(images[j])
        axes[0, j].set_title(f"true: {cfg.class_names[targets[i]]}", fontsize=8)
        axes[1, j].imshow(canvases[j])
        source = int(model.head.mapping[answer[j]])
        axes[1, j].set_title(f"answer: {cfg.class_names[answer[j]]}\n(ImageNet '{names[source].split(',')[0]}')",
                             fontsize=7)
        for row in (0, 1):
            axes[row, j].axis("off")
    fig.suptitle(f"EfficientNet-Lite0 (scores only): test images, and the {cfg.img_size} px canvases it is sent",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    print(f"wrote {args.out} from {run}")


if __name__ == "__main__":
    main()
