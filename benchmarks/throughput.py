"""Speed against the floor: training and inference images/s on the embedded backbone.

The *floor* is the least any prompt method must pay per training step: the frozen ViT's
forward plus the backward to its input, over the same token count as PGN (1 + g*g + K),
with no generator. Every method is timed in the same process, interleaved (one step of
each per round), and the median over rounds is reported with its ratio to the floor.
Generator FLOPs are counted with torch.utils.flop_counter against the backbone's.

    python benchmarks/throughput.py                    # 112 and 224 px, batch 32, default precision
    python benchmarks/throughput.py --precision fp32 --sizes 112
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from pgn.adapter_format import adapter_config
from pgn.backbones import create_backbone
from pgn.files import write_json
from pgn.model import PromptedClassifier
from pgn.precision import resolve
from pgn.prompts import GeneratorConfig, PromptGenerator

K, N = 16, 128


def make(method, backbone, size, layout="append", space="latent"):
    options = {"pgn": dict(num_prompts=K, library_size=N, library_space=space, layout=layout),
               "iip": dict(num_prompts=K, layout=layout)}.get(method, {})
    cfg = adapter_config(backbone, method, ["a", "b"], img_size=size, **options)
    model = PromptedClassifier.from_config(cfg, backbone)
    torch.nn.init.normal_(model.head.fc.weight, std=0.01)
    return model


def train_step_fn(model, x, y, bf16):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def floor_step_fn(backbone, x, bf16):
    """Forward + backward to the input over 1 + g*g + K tokens; no generator, no weight gradients."""
    extra = torch.zeros(x.shape[0], K, backbone.width, requires_grad=True)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            tokens = torch.cat([backbone.tokens(x), extra.to(x.dtype)], 1)
            out = backbone.encode(tokens)
        out.float().sum().backward()
        extra.grad = None
    return step


def infer_fn(fn, bf16):
    def step():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            fn()
    return step


def timed(fns: dict, rounds: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():  # interleaved: drifts in machine load hit every method alike
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def bench_size(backbone, size, batch, rounds, bf16) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 2, (batch,))
    models = {m: make(m, backbone, size) for m in ("pgn", "iip", "vp", "linear")}
    train = {"floor": floor_step_fn(backbone, x, bf16)}
    train.update({m: train_step_fn(models[m], x, y, bf16) for m in ("pgn", "iip", "vp")})
    # The linear probe trains on cached features: its per-step cost is one frozen forward.
    train["linear (features)"] = infer_fn(lambda: models["linear"].features(x), bf16)
    ft = make("finetune", backbone, size)
    train["finetune"] = train_step_fn(ft, x, y, bf16)
    t_train = timed(train, rounds)  # fine-tuning trained its own copy; the shared backbone is still frozen

    ext, frm = make("pgn", backbone, size, "extend", "pixel").eval(), make("pgn", backbone, size, "frame", "pixel").eval()

    def deployed(model):
        def run():
            coeffs = model.prompts.coefficients(x)
            canvas = model.layout.compose(x, model.prompts.library.patches(coeffs))
            return model.head(backbone.vit.forward_features(canvas)[:, 0])
        return run
    infer = {
        "plain ViT": infer_fn(lambda: backbone(x), bf16),
        "pgn append (latent)": infer_fn(lambda: models["pgn"].eval()(x), bf16),
        "pgn extend canvas": infer_fn(deployed(ext), bf16),
        "pgn frame canvas": infer_fn(deployed(frm), bf16),
    }
    t_infer = timed(infer, rounds)
    gen_224 = PromptGenerator(GeneratorConfig(num_prompts=K, library_size=N, input_size=size), backbone.width).eval()
    with torch.no_grad():
        f_gen = flops(lambda: gen_224(x[:1]))
        f_vit = flops(lambda: backbone.encode(torch.cat([backbone.tokens(x[:1]), torch.zeros(1, K, backbone.width)], 1)))
    floor = t_train["floor"]
    return {
        "size": size, "batch": batch,
        "train": {k: {"images_per_s": batch / v, "ratio_to_floor": v / floor} for k, v in t_train.items()},
        "inference": {k: {"images_per_s": batch / v, "ratio_to_plain": v / t_infer["plain ViT"]}
                      for k, v in t_infer.items()},
        "flops_per_image": {"generator": f_gen, "backbone_with_prompts": f_vit, "generator_share": f_gen / f_vit},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    ap.add_argument("--out", default="docs/throughput.json")
    args = ap.parse_args()
    bf16 = resolve(args.precision, "cpu") == "bf16"
    backbone = create_backbone()
    t0 = time.perf_counter()
    results = [bench_size(backbone, s, args.batch, args.rounds, bf16) for s in args.sizes]
    meta = {"command": "python benchmarks/throughput.py " + " ".join(
                f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "precision": "bf16 autocast" if bf16 else "fp32", "seconds": round(time.perf_counter() - t0)}
    write_json(Path(args.out), {"meta": meta, "results": results})
    write_markdown(Path(args.out).with_suffix(".md"), results, meta)
    print(json.dumps({"meta": meta, "results": results}, indent=1))


def write_markdown(path: Path, results: list, meta: dict) -> None:
    lines = ["# Speed on the embedded backbone", "",
             f"Command: `{meta['command']}` ({meta['seconds']} s). Machine: {meta['machine']}; {meta['precision']}. "
             "Median over interleaved rounds; ratios measured in the same process.", ""]
    for r in results:
        lines += [f"## {r['size']} px, batch {r['batch']}", "", "| training step | images/s | time / floor |", "|---|---|---|"]
        lines += [f"| {k} | {v['images_per_s']:.1f} | {v['ratio_to_floor']:.2f} |" for k, v in r["train"].items()]
        lines += ["", "| inference | images/s | time / plain ViT |", "|---|---|---|"]
        lines += [f"| {k} | {v['images_per_s']:.1f} | {v['ratio_to_plain']:.2f} |" for k, v in r["inference"].items()]
        f = r["flops_per_image"]
        lines += ["", f"Generator FLOPs per image: {f['generator'] / 1e6:.1f} M, backbone with 16 prompts: "
                      f"{f['backbone_with_prompts'] / 1e9:.2f} G ({100 * f['generator_share']:.2f} %).", ""]
    lines += ["The floor is the frozen ViT's forward plus backward to its input over the same tokens as PGN "
              "(1 + grid + 16), with no generator: what any prompt method must pay. `linear (features)` is one "
              "frozen forward (the probe trains on cached features)."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
