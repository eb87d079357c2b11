"""A candidate fix for the demo's tail (docs/demo-seeds.md), run on chosen seeds with the seed study's machinery.

    python benchmarks/demo_tail_candidates.py --precision bf16 --seeds 3 0 --grad-clip 1.0

Each run is the seed study's run (``pgn demo --seed S --precision P``'s configuration, through
``pgn_study.comparison``) with one change to the recipe, a global gradient-norm clip: a
``Variant("clip<value>")``, cached under runs/demo-seeds and recorded in docs/records/demo-seeds/...
/pgn@clip<value>/ beside the recipe's own records. The seed study's report does not read them; a candidate
is adopted only after it has run over every seed of the study in both precisions.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pgn.backbones import DEFAULT_BACKBONE, create_backbone
from pgn.data import build_dataset
from pgn.demo import DATASET, EPOCHS, LR, TRAIN_IMAGES
from pgn_study.comparison import ComparisonConfig, Runner, Variant, run_key, run_root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precision", choices=("bf16", "fp32"), required=True)
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--grad-clip", type=float, required=True)
    ap.add_argument("--runs", default="runs/demo-seeds")
    ap.add_argument("--record", default="docs/records/demo-seeds")
    args = ap.parse_args()
    bb = create_backbone(DEFAULT_BACKBONE)
    pre = bb.preprocessing
    data = build_dataset(DATASET, img_size=112, mean=pre.mean, std=pre.std, train_limit=TRAIN_IMAGES)
    cfg = ComparisonConfig(methods=("pgn",), epochs=EPOCHS, seeds=1, img_size=112, precision=args.precision,
                           runs=Path(args.runs), record=Path(args.record), candidates={"pgn": [LR]})
    variant = Variant(f"clip{args.grad_clip:g}", train={"grad_clip": args.grad_clip})
    runner = Runner(bb, cfg, lambda line: print(line, flush=True))
    for seed in args.seeds:
        key = run_key(run_root(cfg, DATASET, data), "pgn", "test", LR, seed, variant=variant)
        r = runner(key, "pgn", data, LR, seed, variant=variant)
        print(f"seed {seed}: top-1 {100 * r['top1']:.2f}; by epoch "
              + ", ".join(f"{100 * e['test_top1']:.1f}" for e in r["epochs"])
              + "; library update " + ", ".join(f"{e.get('update/library', 0):.4f}" for e in r["epochs"]), flush=True)


if __name__ == "__main__":
    main()
