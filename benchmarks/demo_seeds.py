"""The demo's configuration over many seeds, in both precisions: how far a seed moves ``make demo``'s answer.

    python benchmarks/demo_seeds.py                      # 10 seeds x {bf16, fp32}, resumes from its records
    python benchmarks/demo_seeds.py --seeds 3 --precisions fp32
    python benchmarks/demo_seeds.py --render-only        # docs/demo-seeds.md + .json + .png from the records

Each run is exactly what ``pgn demo --seed S --precision P`` trains (ELPV, the stratified seed-0 subset of
1,000 training images, all 656 test images, 112 px, 7 epochs, SGD lr 0.01 for everything, warm-up over half
the run then cosine; PGN K=16, N=128): the seed draws the model's initialisation and the data order.
Runs go through ``pgn_study.comparison`` (one rate given, so no validation runs), are cached under
``runs/demo-seeds`` and recorded in ``docs/records/demo-seeds`` (the result and every epoch's metrics row),
so the study resumes from a fresh clone. Seeds are interleaved across precisions, so a partial study
is balanced. bf16 runs emulated where the CPU has no native bfloat16 (slow, but the same arithmetic).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from pgn.backbones import DEFAULT_BACKBONE, create_backbone
from pgn.data import build_dataset
from pgn.demo import DATASET, EPOCHS, LR, TRAIN_IMAGES
from pgn.files import atomic_path, write_json
from pgn_study.comparison import (
    ComparisonConfig,
    NotCached,
    Runner,
    Variant,
    finished_result,
    format_drops,
    input_dependence,
    run_key,
    run_root,
)

METHODS = ("pgn", "linear")
# Candidate changes to PGN's recipe for the tail (benchmarks/demo_tail_candidates.py trains them): read from
# their records and shown beside the recipe over the same seeds; never trained here.
CANDIDATES = {"pgn+clip1": Variant("clip1", train={"grad_clip": 1.0}),
              # the prompts (generator and library) at half the peak rate, the head at the recipe's
              "pgn+prompts-half": Variant("prompts-half", train={"lr": LR / 2, "head_lr": LR})}
IMG = 112
DOCS = Path("docs")


def configs(args) -> dict[str, ComparisonConfig]:
    return {p: ComparisonConfig(methods=METHODS, epochs=EPOCHS, seeds=args.seeds, img_size=IMG, precision=p,
                                runs=Path(args.runs), record=Path(args.record), render_only=args.render_only,
                                candidates={m: [LR] for m in METHODS})
            for p in args.precisions}


def collect(args, backbone, data) -> dict:
    """{precision: {method: [result or None per seed]}}, training what is missing unless render-only."""
    cfgs = configs(args)
    runners = {p: Runner(backbone, cfg, lambda line: print(line, flush=True)) for p, cfg in cfgs.items()}
    out = {p: {m: [None] * args.seeds for m in METHODS} for p in cfgs}
    for seed in range(args.seeds):
        for p, cfg in cfgs.items():
            root = run_root(cfg, DATASET, data)
            for method in METHODS:
                key = run_key(root, method, "test", LR, seed)
                try:
                    out[p][method][seed] = runners[p](key, method, data, LR, seed)
                except NotCached:
                    out[p][method][seed] = finished_result(cfg, key)
            for name, variant in CANDIDATES.items():
                key = run_key(root, "pgn", "test", LR, seed, variant=variant)
                out[p].setdefault(name, [None] * args.seeds)[seed] = finished_result(cfg, key)
    return out


def summarise(results: dict) -> dict:
    table = {}
    for p, by_method in results.items():
        for method, runs in by_method.items():
            accs = [r["top1"] for r in runs if r is not None and r.get("top1") is not None]
            if not accs:
                continue
            med = statistics.median(accs)
            table.setdefault(p, {})[method] = {
                "seeds": len(accs), "test_top1": accs, "median": med, "worst": min(accs), "best": max(accs),
                "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "worst_below_median_points": round(100 * (med - min(accs)), 2),
                "seconds": round(sum(r["seconds"] for r in runs if r is not None), 1),
                "devices": sorted({r.get("device", "?") for r in runs if r is not None})}
    return table


def strip_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    labels, x = [], 0
    for p, by_method in results.items():
        for method, runs in by_method.items():
            accs = [100 * r["top1"] for r in runs if r is not None and r.get("top1") is not None]
            if not accs:
                continue
            jitter = torch.linspace(-0.15, 0.15, len(accs)).tolist() if len(accs) > 1 else [0.0]
            ax.scatter([x + j for j in jitter], accs, s=22, alpha=0.8, color="C0" if method == "pgn" else "C1")
            ax.hlines(statistics.median(accs), x - 0.3, x + 0.3, color="k", lw=1)
            labels.append(f"{method}\n{p}")
            x += 1
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("ELPV test top-1 (%)")
    ax.set_title(f"make demo's configuration, one dot per seed ({EPOCHS} epochs, lr {LR})", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def diagnostics(results: dict) -> list[str]:
    """Per PGN seed, from its recorded epoch rows: where the train loss rose, and how large the library's steps
    were. A run that falls shows it here (the warm-up ends at epoch EPOCHS / 2, the peak rate)."""
    lines = ["| precision | run | seed | test top-1 | test top-1 by epoch | largest train-loss rise (epoch) | "
             "largest library update (epoch) | largest library grad norm | drop with the mean mixture / shuffled "
             "(points) |", "|---|---|---|---|---|---|---|---|---|"]
    for p, by_method in results.items():
        for name, seed, r in ((n, s, r) for n in ("pgn", *CANDIDATES) for s, r in enumerate(by_method.get(n, []))):
            if not r or not r.get("epochs"):
                continue
            rows = r["epochs"]
            rises = [(rows[i]["train_loss"] - rows[i - 1]["train_loss"], i + 1) for i in range(1, len(rows))]
            rise, at = max(rises) if rises else (0.0, 1)
            upd = max((row.get("update/library", 0.0), i + 1) for i, row in enumerate(rows))
            grad = max(row.get("grad_norm/library", 0.0) for row in rows)
            lines.append(f"| {p} | {name} | {seed} | {100 * r['top1']:.2f} | "
                         + ", ".join(f"{100 * row['test_top1']:.1f}" for row in rows)
                         + f" | {rise:+.3f} ({at}) | {upd[0]:.4f} ({upd[1]}) | {grad:.2f} | {_drops(r)} |")
    return lines


def _drops(r: dict) -> str:
    """The input dependence in points, mean mixture / shuffled; "n/a" for runs recorded before it existed."""
    d = input_dependence(r)
    return "n/a" if d is None else format_drops(d)


def paired(results: dict) -> list[str]:
    """Each candidate against the recipe on the seeds both have run: per seed, and median / worst of each."""
    lines = []
    for name in CANDIDATES:
        rows = ["| precision | seeds run by both | recipe: median / worst | candidate: median / worst | "
                "per seed (recipe -> candidate) |", "|---|---|---|---|---|"]
        for p, by_method in results.items():
            pairs = [(seed, a["top1"], b["top1"]) for seed, (a, b) in
                     enumerate(zip(by_method.get("pgn", []), by_method.get(name, []))) if a and b]
            if not pairs:
                continue
            recipe, cand = [a for _, a, _ in pairs], [b for _, _, b in pairs]
            rows.append(f"| {p} | {len(pairs)} | {100 * statistics.median(recipe):.2f} / {100 * min(recipe):.2f} | "
                        f"{100 * statistics.median(cand):.2f} / {100 * min(cand):.2f} | "
                        + ", ".join(f"{seed}: {100 * a:.2f} -> {100 * b:.2f}" for seed, a, b in pairs) + " |")
        if len(rows) > 2:
            lines += [f"### `{name}`: {CANDIDATES[name].train}", ""] + rows + [""]
    return lines


def render(table: dict, meta: dict, out: Path, results: dict | None = None) -> None:
    lines = ["# `make demo` over seeds", "",
             f"Command: `{meta['command']}` ({meta['machine']}; {meta['seconds_of_all_runs']:,} s of training and "
             "testing in all). Each run is what `pgn demo --seed S --precision P` trains: ELPV, the stratified "
             f"seed-0 subset of {TRAIN_IMAGES:,} training images, all 656 test images, {IMG} px, {EPOCHS} epochs, "
             f"SGD lr {LR} for everything trained, warm-up over half the run then cosine to lr/100. The seed draws "
             "the model's initialisation and the data order; the images are the same in every run. Raw numbers "
             "and every epoch's metrics: [demo-seeds.json](demo-seeds.json) and docs/records/demo-seeds/. Run "
             "seconds include time when other jobs shared the two cores.", ""]
    done = min(s["seeds"] for by_m in table.values() for m, s in by_m.items() if m in METHODS)
    if done < meta["seeds_asked"]:
        lines += [f"**Incomplete: {done} of the {meta['seeds_asked']} seeds have finished in every row so far.** "
                  "The study resumes from its records (the same command); a median, worst and best of so few "
                  "seeds say little about the tail yet.", ""]
    lines += [
             "| precision | method | seeds | median | worst | best | mean ± std | worst below median (points) |",
             "|---|---|---|---|---|---|---|---|"]
    for p, by_method in table.items():
        for method, s in by_method.items():
            lines.append(f"| {p} | {method} | {s['seeds']} | {100 * s['median']:.2f} | {100 * s['worst']:.2f} | "
                         f"{100 * s['best']:.2f} | {100 * s['mean']:.2f} ± {100 * s['std']:.2f} | "
                         f"{s['worst_below_median_points']:.2f} |")
    lines += ["", "Test top-1 (%) per seed:", ""]
    for p, by_method in table.items():
        for method, s in by_method.items():
            lines.append(f"- {p} {method}: " + ", ".join(f"{100 * a:.2f}" for a in s["test_top1"]))
    lines += ["", "![one dot per seed](demo-seeds.png)", ""]
    if results:
        lines += ["## What a falling seed looks like", "",
                  "Computed from each PGN run's recorded epoch rows (docs/records/demo-seeds). The warm-up peaks "
                  f"at epoch {EPOCHS / 2:g}; a seed that falls shows the train loss rising there and the token "
                  "library taking steps several times larger than in the other seeds (relative update size, "
                  "`update/library`). The last column is the input dependence (docs/results.md): what each "
                  "image's own mixtures add over the test split's mean mixture and over another image's.",
                  ""] + diagnostics(results) + [""]
        candidates = paired(results)
        if candidates:
            lines += ["## Candidates for the tail, on the same seeds", "",
                      "Trained by `python benchmarks/demo_tail_candidates.py --precision P --seeds ... --candidate "
                      "NAME` (the same runs with one change to the recipe), recorded beside them under "
                      "docs/records/demo-seeds/.../pgn@VARIANT/.", ""] + candidates
    with atomic_path(out) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--precisions", nargs="+", choices=("bf16", "fp32"), default=["bf16", "fp32"])
    ap.add_argument("--runs", default="runs/demo-seeds")
    ap.add_argument("--record", default="docs/records/demo-seeds")
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--out", default=str(DOCS / "demo-seeds"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    backbone = create_backbone(DEFAULT_BACKBONE)
    pre = backbone.preprocessing
    data = build_dataset(DATASET, img_size=IMG, mean=pre.mean, std=pre.std, train_limit=TRAIN_IMAGES)
    results = collect(args, backbone, data)
    table = summarise(results)
    if not table:
        print("no finished run yet", file=sys.stderr)
        return 1
    devices = sorted({d for by_m in table.values() for s in by_m.values() for d in s["devices"]})
    args_shown = [a for a in sys.argv[1:] if a != "--render-only"]  # the runs' command, not the rendering's
    meta = {"command": " ".join(["python benchmarks/demo_seeds.py", *args_shown]), "seeds_asked": args.seeds,
            "rendered_only": args.render_only,
            "machine": " and ".join(devices) + f", torch {torch.__version__}",
            "seconds_of_all_runs": round(sum(s["seconds"] for by_m in table.values() for s in by_m.values())),
            "seconds_this_call": round(time.perf_counter() - t0)}
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"meta": meta, "summary": table})
    strip_plot(results, out.with_suffix(".png"))
    render(table, meta, out.with_suffix(".md"), results)
    print(json.dumps({p: {m: {k: s[k] for k in ("seeds", "median", "worst", "best")} for m, s in by_m.items()}
                      for p, by_m in table.items()}, indent=1))
    print(f"report: {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
