"""PGN training-step and backbone-forward speed on a GPU, on synthetic batches (no data loading).

The embedded backbone at 224 px, K=16, library 128, batch 256, bf16 autocast; 3 warm-up steps, then
10 timed. Separates the model's speed from the data pipeline's (docs/comparison-gpu.md).

    python benchmarks/gpu_step_speed.py [--batch 256] [--device cuda]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

import pgn


def timed(step, device: str, warmup: int = 3, steps: int = 10) -> float:
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        step()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    dev, bs = args.device, args.batch
    model = pgn.create_model(method="pgn", classes=[str(i) for i in range(10)], img_size=224, library_size=128).to(dev)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    x = torch.randn(bs, 3, 224, 224, device=dev)
    y = torch.randint(0, 10, (bs,), device=dev)

    def train_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            model.backbone(x)

    model.train()
    train_s = timed(train_step, dev)
    model.eval()
    fwd_s = timed(forward, dev)
    print(json.dumps({"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "batch": bs,
                      "pgn_train_images_per_s": round(bs / train_s, 1),
                      "backbone_forward_images_per_s": round(bs / fwd_s, 1),
                      "max_memory_GiB": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)}))


if __name__ == "__main__":
    main()
