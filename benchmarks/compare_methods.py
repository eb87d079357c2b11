"""The paper's comparison on real data: linear probe, IIP, VP, PGN and full fine-tuning.

Embedded backbone at 112 px; ELPV (binary and 4-class, full 1,968/656 split) and a fixed
Fashion-MNIST subset (stratified, seed 0: --fmnist-train train images, --fmnist-test test
images). Every method gets the same epochs and schedule (SGD momentum 0.9, 1 warm-up epoch,
cosine to lr/100, batch 32, bf16 autocast where native). Each method's learning rate is
chosen on a validation split carved from train (20 %, stratified, seed 0) -- never on
test -- then the method is trained on the full train split with 3 seeds and tested.
Results are cached per (dataset, method, lr, seed, split) under --runs, so an interrupted
run resumes where it stopped. Writes docs/results.md (table) and docs/results.json (raw).

    python benchmarks/compare_methods.py            # the full comparison
    python benchmarks/compare_methods.py --quick    # minutes: ELPV only, 1 epoch, small subsets, 1 seed
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Subset

from pgn.adapter import AdapterConfig, build_classifier
from pgn.backbones import create_backbone
from pgn.data import DataSpec, build_dataset
from pgn.files import write_json
from pgn.prompts import GeneratorConfig
from pgn.training import TrainConfig, native_bf16, train

HEAD_LR = 0.01  # chosen on ELPV's validation split for the linear probe (see pgn/cli/demo.py)
# Learning-rate candidates per method (the quantity each method trains besides the head).
CANDIDATES = {
    "linear": [0.003, 0.01, 0.03],   # the head itself
    "iip": [0.01, 0.1],
    "vp": [1.0, 10.0],               # pixel-space prompt: Bahng et al. use large rates (40)
    "pgn": [0.01, 0.1],
    "pgn-frame": [0.01, 0.1],        # PGN with a pixel library in the frame layout: input-only deployment
    "finetune": [1e-4, 1e-3],        # backbone lr (head at HEAD_LR)
}


def method_config(method: str, backbone, data: DataSpec, img_size: int) -> AdapterConfig:
    base = "pgn" if method.startswith("pgn") else method
    layout, space = ("frame", "pixel") if method == "pgn-frame" else ("append", "latent")
    gen = vars(GeneratorConfig(num_prompts=16, library_size=128, input_size=img_size, library_space=space)) \
        if base == "pgn" else None
    pre = backbone.preprocessing
    return AdapterConfig(method=base, backbone=backbone.name, backbone_width=backbone.width,
                         class_names=list(data.class_names), img_size=img_size, mean=pre.mean, std=pre.std,
                         generator=gen, num_prompts=16 if base in ("pgn", "iip") else 0, layout=layout,
                         dataset=data.name, vp_pad=max(1, round(30 * img_size / 224)))


def train_config(method: str, lr: float, epochs: int, seed: int, bf16: bool) -> TrainConfig:
    if method == "linear":
        return TrainConfig(epochs=epochs, lr=lr, head_lr=lr, seed=seed, bf16=bf16, progress=False)
    if method == "finetune":
        return TrainConfig(epochs=epochs, lr=lr, backbone_lr=lr, head_lr=HEAD_LR, seed=seed, bf16=bf16, progress=False)
    return TrainConfig(epochs=epochs, lr=lr, head_lr=HEAD_LR, seed=seed, bf16=bf16, progress=False)


def validation_split(data: DataSpec) -> DataSpec:
    targets = list(data.train.targets)
    tr, va = train_test_split(range(len(targets)), test_size=0.2, stratify=targets, random_state=0)
    return DataSpec(name=data.name, class_names=data.class_names, train=Subset(data.train, tr),
                    test=Subset(data.train, va))


def run_one(key: Path, method, backbone, data, img_size, lr, epochs, seed, bf16) -> dict:
    """Train and test one configuration; cached in key.json."""
    cached = key.with_suffix(".json")
    if cached.is_file():
        return json.loads(cached.read_text())
    run_dir = key
    if run_dir.exists():  # an interrupted attempt: start it again cleanly
        shutil.rmtree(run_dir)
    acfg = method_config(method, backbone, data, img_size)
    model = build_classifier(acfg, backbone)
    t0 = time.perf_counter()
    row = train(model, acfg, data, train_config(method, lr, epochs, seed, bf16), run_dir, log=lambda *_: None)
    trainable = model.num_trainable()  # before fine-tuning's unfreeze is undone below
    for p in backbone.parameters():  # full fine-tuning unfreezes the shared backbone: restore it
        p.requires_grad_(False)
    if method == "finetune":
        backbone.load_state_dict(ORIGINAL_BACKBONE)
    result = {"top1": row["test_top1"], "trainable_parameters": trainable,
              "seconds": round(time.perf_counter() - t0, 1)}
    write_json(cached, result)
    return result


ORIGINAL_BACKBONE: dict = {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["elpv", "elpv4", "fashion-mnist"])
    ap.add_argument("--methods", nargs="+", default=list(CANDIDATES))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fmnist-train", type=int, default=2000)
    ap.add_argument("--fmnist-test", type=int, default=2000)
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", default="runs/bench-compare")
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    if args.quick:
        args.datasets, args.epochs, args.seeds = ["elpv"], 1, 1
    bf16 = native_bf16()
    backbone = create_backbone()
    ORIGINAL_BACKBONE.update({k: v.clone() for k, v in backbone.state_dict().items()})
    pre = backbone.preprocessing
    runs = Path(args.runs + ("-quick" if args.quick else ""))
    t_all = time.perf_counter()
    results: dict = {}
    for name in args.datasets:
        limits = dict(train_limit=args.fmnist_train, test_limit=args.fmnist_test) if name == "fashion-mnist" else {}
        if args.quick:
            limits = dict(train_limit=400, test_limit=200)
        data = build_dataset(name, img_size=args.img_size, mean=pre.mean, std=pre.std, **limits)
        val = validation_split(data)
        for method in args.methods:
            # 1) learning rate on the validation split (seed 0)
            scores = {}
            for lr in CANDIDATES[method]:
                r = run_one(runs / name / method / f"val-lr{lr}", method, backbone, val, args.img_size, lr,
                            args.epochs, 0, bf16)
                scores[lr] = r["top1"]
            best = max(scores, key=lambda lr: (scores[lr], -lr))
            # 2) the chosen lr on the full train split, tested, per seed
            tests = [run_one(runs / name / method / f"test-lr{best}-seed{s}", method, backbone, data, args.img_size,
                             best, args.epochs, s, bf16) for s in range(args.seeds)]
            accs = [t["top1"] for t in tests]
            results.setdefault(name, {})[method] = {
                "val_top1_by_lr": scores, "lr": best, "test_top1": accs, "mean": statistics.mean(accs),
                "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "trainable_parameters": tests[0]["trainable_parameters"],
                "train_sizes": [len(data.train), len(data.test)]}
            print(json.dumps({"dataset": name, "method": method, **results[name][method]}), flush=True)
    meta = {"command": "python benchmarks/compare_methods.py" + (" --quick" if args.quick else ""),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "precision": "bf16 autocast" if bf16 else "fp32", "epochs": args.epochs, "seeds": args.seeds,
            "img_size": args.img_size, "seconds": round(time.perf_counter() - t_all)}
    suffix = "-quick" if args.quick else ""
    write_json(Path(args.out) / f"results{suffix}.json", {"meta": meta, "results": results})
    write_markdown(Path(args.out) / f"results{suffix}.md", results, meta)


def write_markdown(path: Path, results: dict, meta: dict) -> None:
    methods = list(CANDIDATES)
    lines = [f"# Methods compared on the embedded backbone ({meta['img_size']} px)", "",
             f"Command: `{meta['command']}` ({meta['seconds']} s on {meta['machine']}, {meta['precision']}). "
             f"{meta['epochs']} epochs per run, {meta['seeds']} seed(s); learning rates chosen on a validation split "
             "carved from train. Test top-1 (%), mean ± std over seeds.", "",
             "| dataset (train/test) | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for name, res in results.items():
        sizes = next(iter(res.values()))["train_sizes"]
        cells = [f"{100 * res[m]['mean']:.2f} ± {100 * res[m]['std']:.2f}" if m in res else "n/a" for m in methods]
        lines.append(f"| {name} ({sizes[0]}/{sizes[1]}) | " + " | ".join(cells) + " |")
    any_res = next(iter(results.values()))
    lines.append("| trainable parameters | " + " | ".join(
        f"{any_res[m]['trainable_parameters']:,}" if m in any_res else "n/a" for m in methods) + " |")
    lines.append("| chosen lr (first dataset) | " + " | ".join(
        str(any_res[m]["lr"]) if m in any_res else "n/a" for m in methods) + " |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
