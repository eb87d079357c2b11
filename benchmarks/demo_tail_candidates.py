"""A candidate fix for the demo's tail (docs/demo-seeds.md), run on chosen seeds with the seed study's machinery.

    python benchmarks/demo_tail_candidates.py --precision bf16 --seeds 3 0 --candidate pgn+clip1
    python benchmarks/demo_tail_candidates.py --precision fp32 --seeds 3 9 2 --candidate pgn+prompts-half

Each run is the seed study's run (``pgn demo --seed S --precision P``'s configuration, through
``pgn_study.comparison``) with one change to the recipe, a named ``Variant`` of
``benchmarks/demo_seeds.CANDIDATES``, cached under runs/demo-seeds and recorded in
docs/records/demo-seeds/.../pgn@<variant>/ beside the recipe's own records. The seed study's report
shows them paired with the recipe on the seeds both have run; a candidate is adopted only after it has
run over every seed of the study in both precisions.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from demo_seeds import CANDIDATES, IMG

from pgn.backbones import DEFAULT_BACKBONE, create_backbone
from pgn.data import build_dataset
from pgn.demo import DATASET, EPOCHS, LR, TRAIN_IMAGES
from pgn_study.comparison import ComparisonConfig, Runner, run_key, run_root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precision", choices=("bf16", "fp32"), required=True)
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--candidate", choices=list(CANDIDATES), required=True)
    ap.add_argument("--runs", default="runs/demo-seeds")
    ap.add_argument("--record", default="docs/records/demo-seeds")
    args = ap.parse_args()
    bb = create_backbone(DEFAULT_BACKBONE)
    pre = bb.preprocessing
    data = build_dataset(DATASET, img_size=IMG, mean=pre.mean, std=pre.std, train_limit=TRAIN_IMAGES)
    cfg = ComparisonConfig(methods=("pgn",), epochs=EPOCHS, seeds=1, img_size=IMG, precision=args.precision,
                           runs=Path(args.runs), record=Path(args.record), candidates={"pgn": [LR]})
    variant = CANDIDATES[args.candidate]
    runner = Runner(bb, cfg, lambda line: print(line, flush=True))
    for seed in args.seeds:
        key = run_key(run_root(cfg, DATASET, data), "pgn", "test", LR, seed, variant=variant)
        r = runner(key, "pgn", data, LR, seed, variant=variant)
        print(f"seed {seed}: top-1 {100 * r['top1']:.2f}; by epoch "
              + ", ".join(f"{100 * e['test_top1']:.1f}" for e in r["epochs"])
              + "; library update " + ", ".join(f"{e.get('update/library', 0):.4f}" for e in r["epochs"]), flush=True)


if __name__ == "__main__":
    main()
