"""The training recipe, measured: initial perturbation, ablations and convergence on the embedded backbone.

Three phases, each cached per run under ``runs/recipe-study`` (an interrupted call resumes, a
finished one re-renders in seconds) and each writing its page in docs/:

    python benchmarks/recipe_study.py perturbation   # docs/perturbation.json: prompts' effect at step 0
    python benchmarks/recipe_study.py ablations      # docs/ablations.md + .json: ELPV, 3 seeds per variant
    python benchmarks/recipe_study.py convergence    # docs/convergence.md + .json + .png: top-1 vs epochs
    python benchmarks/recipe_study.py generator --epochs 10 --precision fp32
                                                     # docs/ablations-generator.json, a section of ablations.md:
                                                     # what makes the generator learn (ELPV, Fashion-MNIST)

Protocol (``pgn_study.comparison``): ELPV at 112 px, bf16 autocast where native, batch 32, SGD momentum
0.9, warm-up over half the run then cosine to lr/100, no gradient clipping. The recipe's rate is
chosen on a validation split carved from train (20 %, stratified, seed 0) from ``--grid`` at the
ablation budget; every ablation variant changes one thing at that rate and trains 3 seeds, tested
on the test split.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from pgn.analysis import initial_perturbation
from pgn.backbones import DEFAULT_BACKBONE, create_backbone
from pgn.data import build_dataset
from pgn.files import atomic_path, write_json
from pgn.model import PromptedClassifier
from pgn.precision import resolve
from pgn.training import read_metrics
from pgn_study.comparison import (
    RECIPE,
    ComparisonConfig,
    NotCached,
    Runner,
    Variant,
    finished_result,
    input_dependence,
    method_config,
    run_key,
    run_root,
    select_and_test,
    validation_split,
)

DOCS = Path("docs")
IMG = 112


def _variants(lr: float) -> list[tuple[Variant, str]]:
    """The ablations: each changes one thing of the recipe (BN head, default init, tied rate, no clip)."""
    return [
        (RECIPE, "the recipe: BatchNorm head, PyTorch init, one rate for all, no clipping"),
        (Variant("old-defaults", adapter={"head_norm": "none"},
                 train={"lr": 0.1, "head_lr": 0.01, "grad_clip": 1.0, "head_init": "zero", "warmup_epochs": 1.0}),
         "the previous defaults: raw-feature zero-init head at 0.01, prompts 0.1, clip 1.0, 1 warm-up epoch"),
        (Variant("clip", train={"grad_clip": 1.0}), "+ global gradient-norm clip 1.0"),
        (Variant("raw-head", adapter={"head_norm": "none"}), "head on raw CLS features (no BatchNorm)"),
        (Variant("zero-head", train={"head_init": "zero"}), "zero-initialised linear layer"),
        (Variant("head-lr-div10", train={"head_lr": lr / 10}), f"head at lr/10 = {lr / 10:g} (separate rate)"),
        (Variant("library-std0.2", generator={"library_init_std": 0.2}), "library init N(0, 0.2) instead of 0.02"),
        (Variant("gen-out-zero", generator={"output_init": "zero"}), "generator's last layer zero: uniform mixtures"),
    ]


def _generator_variants(lr: float) -> list[tuple[Variant, str]]:
    """The generator-learning ablations: each changes how fast or how far the mixtures can leave uniform."""
    return [
        (RECIPE, "the recipe: one rate for everything trained"),
        (Variant("prompt-lr-x3", train={"lr": 3 * lr, "head_lr": lr}), f"prompts at 3x the head's rate ({3 * lr:g})"),
        (Variant("prompt-lr-x10", train={"lr": 10 * lr, "head_lr": lr}), f"prompts at 10x the head's rate ({10 * lr:g})"),
        (Variant("adamw-prompts", train={"prompt_optimizer": "adamw", "lr": 1e-3, "head_lr": lr}),
         "AdamW at 1e-3 for the generator and library; the head stays SGD"),
        (Variant("out-scale4", generator={"output_init_scale": 4.0}),
         "generator's last layer x4 at init: sharper mixtures at step 0"),
        (Variant("gen-size56", generator={"generator_size": 56}), "the generator sees the image at 56 px (not 112)"),
    ]


# The report each phase writes; its meta names the precision its runs were made in.
REPORTS = {"ablations": "ablations.json", "convergence": "convergence.json", "generator": "ablations-generator.json"}


def _precision(args) -> str:
    """The precision of the runs this call reads or trains.

    A render-only call with ``auto`` reads the precision the phase's report was made in: resolving ``auto`` on
    this CPU could name another precision (bf16 where it is native), whose cache keys hold nothing, and the
    report would come out empty."""
    report = DOCS / REPORTS.get(args.phase, "")
    if args.render_only and args.precision == "auto" and report.is_file():
        recorded = json.loads(report.read_text()).get("meta", {}).get("precision")
        # runs recorded before the precision was stored sit under the fp32 keys (no suffix)
        return recorded if recorded in ("fp32", "bf16") else "fp32"
    return resolve(args.precision, "cpu")


def _setup(args):
    backbone = create_backbone(DEFAULT_BACKBONE)
    pre = backbone.preprocessing
    cfg = ComparisonConfig(methods=("linear", "pgn"), epochs=args.epochs, seeds=args.seeds, img_size=IMG,
                           precision=_precision(args), runs=Path(args.runs),
                           record=Path(args.record) if args.record else None, render_only=args.render_only)
    return backbone, pre, cfg


# Fixed stratified subsets (seed 0) that fit the study into two hours of a 2-core CPU without bf16.
SUBSETS = {"elpv": (1000, None), "fashion-mnist": (1000, 1000)}
DEFAULT_VARIANTS = ["recipe", "old-defaults", "clip", "raw-head", "zero-head", "library-std0.2"]


def _data(name: str, pre):
    limits = SUBSETS.get(name, (None, None))
    return build_dataset(name, img_size=IMG, mean=pre.mean, std=pre.std, train_limit=limits[0], test_limit=limits[1])


def _recorded_precision(rows: list[dict], cfg) -> str:
    """The precision(s) the rows' runs recorded ("not recorded" for records made before it was stored)."""
    return " and ".join(sorted({r["precision"] for r in rows if r.get("precision")})) or cfg.precision


def _meta(args, cfg, t0) -> dict:
    return {"command": _study_command(sys.argv[1:]),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "precision": cfg.precision, "img_size": IMG, "seconds": round(time.time() - t0)}


def perturbation(args) -> None:
    backbone, pre, _ = _setup(args)
    data = _data("elpv", pre)
    images = torch.stack([data.test[i][0] for i in range(0, len(data.test), max(1, len(data.test) // 128))][:128])
    rows = {}
    setups = [("pgn", RECIPE), ("pgn", Variant("library-std0.2", generator={"library_init_std": 0.2})),
              ("pgn", Variant("library-std0.002", generator={"library_init_std": 0.002})),
              ("pgn", Variant("library-zero", generator={"library_init_std": 0.0})),
              ("pgn", Variant("gen-out-zero", generator={"output_init": "zero"})),
              ("iip", RECIPE), ("pgn-frame", RECIPE)]
    for method, variant in setups:
        runs = []
        for seed in range(3):
            torch.manual_seed(seed)
            model = PromptedClassifier.from_config(method_config(method, backbone, data, IMG, variant), backbone)
            runs.append(initial_perturbation(model, images))
        name = method + ("" if variant is RECIPE else f"@{variant.name}")
        rows[name] = {k: statistics.mean(r[k] for r in runs) for k in runs[0]}
        print(name, rows[name], flush=True)
    write_json(DOCS / "perturbation.json", {"images": len(images), "seeds": 3, "results": rows,
                                            "command": "python benchmarks/recipe_study.py perturbation"})


def ablations(args) -> None:
    t0 = time.time()
    backbone, pre, cfg = _setup(args)
    data = _data("elpv", pre)
    val = validation_split(data)
    runner = Runner(backbone, cfg, lambda line: print(line, flush=True))
    root = run_root(cfg, "elpv", data)
    recipe = select_and_test(runner, root, "pgn", data, val, args.grid, cfg.seeds)
    lr = recipe["lr"]
    rows = []
    # The optimiser's statistics come from the runs' per-epoch logs, which the committed records do not hold:
    # where those logs are gone (a fresh clone), a row keeps what the report last read from them.
    report = DOCS / REPORTS["ablations"]
    logged = {(r["method"], r["variant"]): r.get("optimizer") or {}
              for r in (json.loads(report.read_text())["rows"] if report.is_file() else [])}
    for variant, what in _variants(lr):
        if variant.name not in (args.variants or DEFAULT_VARIANTS):
            continue
        s = recipe if variant is RECIPE else select_and_test(runner, root, "pgn", data, val, [lr], cfg.seeds,
                                                             variant=variant)
        lr_used = variant.train.get("lr", s["lr"])
        runs = [run_key(root, "pgn", "test", lr, seed, None, variant) for seed in range(cfg.seeds)]
        rows.append({"method": "pgn", "variant": variant.name, "what": what, **s, "lr": lr_used,
                     "head_lr": variant.train.get("head_lr", lr_used),
                     "optimizer": _optimizer_stats(runs) or logged.get(("pgn", variant.name), {})})
    for variant, what in ((RECIPE, "linear probe, BatchNorm head"),
                          (Variant("raw-head", adapter={"head_norm": "none"}), "linear probe, raw-feature head")):
        s = select_and_test(runner, root, "linear", data, val, args.grid, cfg.seeds, variant=variant)
        rows.append({"method": "linear", "variant": variant.name, "what": what, **s})
    meta = {**_meta(args, cfg, t0), "epochs": cfg.epochs, "seeds": cfg.seeds, "grid": args.grid,
            "split": [len(data.train), len(data.test)],
            "recipe_lr": lr, "recipe_val_top1_by_lr": recipe["val_top1_by_lr"],
            "precision": _recorded_precision(rows, cfg)}
    write_json(DOCS / "ablations.json", {"meta": meta, "rows": rows})
    _render_ablations(meta, rows)


def generator(args) -> None:
    """Each variant at the recipe's rate, 3 seeds: test top-1 and the input dependence.

    ``--datasets`` and ``--variants`` say what this call *trains*; the report always covers every dataset
    and variant of the study from what is finished, so a call that trains a part never drops the rest.
    """
    t0 = time.time()
    backbone, pre, cfg = _setup(args)
    runner = Runner(backbone, cfg, lambda line: print(line, flush=True))
    lr = json.loads((DOCS / "ablations.json").read_text())["meta"]["recipe_lr"]
    rows, devices, seconds = [], set(), 0.0
    for name in SUBSETS:
        data = _data(name, pre)
        root = run_root(cfg, name, data)
        for variant, what in _generator_variants(lr):
            trains = not args.render_only and name in args.datasets and (
                variant is RECIPE or args.variants is None or variant.name in args.variants)
            cfg.render_only = not trains  # the runner reads it per run
            keys = [run_key(root, "pgn", "test", lr, seed, None, variant) for seed in range(cfg.seeds)]
            seeds = cfg.seeds
            if not trains:  # the seeds finished so far (0, 1, ...)
                seeds = next((i for i, k in enumerate(keys) if finished_result(cfg, k) is None), cfg.seeds)
                if seeds == 0:
                    continue
            s = select_and_test(runner, root, "pgn", data, None, [lr], seeds, variant=variant)
            # From the records (a fresh clone has no run folders): each finished seed's last epoch row.
            results = [r for k in keys[:seeds] if (r := finished_result(cfg, k)) and r.get("epochs")]
            devices.update(r["device"] for r in results if r.get("device"))
            seconds += sum(r["seconds"] for r in results)
            dependence = [d for r in results if (d := input_dependence(r)) is not None]
            drops = {a: [d[a] for d in dependence] for a in ("mean_mixture", "shuffled")}
            entropy = [r["epochs"][-1]["mixture_entropy"] for r in results if "mixture_entropy" in r["epochs"][-1]]
            rows.append({"dataset": name, "variant": variant.name, "what": what, **s,
                         "lr": variant.train.get("lr", lr), "head_lr": variant.train.get("head_lr", lr),
                         "optimizer_name": variant.train.get("prompt_optimizer", "sgd"), "input_dependence": drops,
                         "mixture_entropy_last": statistics.mean(entropy) if entropy else None})
    meta = {**_meta(args, cfg, t0), "epochs": cfg.epochs, "seeds": cfg.seeds, "recipe_lr": lr, "record": args.record,
            # what made the rows, from their records (a report rendered elsewhere names the machines that ran them)
            "command": _study_command(sys.argv[1:]),
            "machine": " and ".join(sorted(devices)) or "no run finished", "seconds_of_all_runs": round(seconds),
            "splits": {name: list(SUBSETS[name]) for name in SUBSETS}, "precision": _recorded_precision(rows, cfg)}
    write_json(DOCS / "ablations-generator.json", {"meta": meta, "rows": rows})
    ablation = json.loads((DOCS / "ablations.json").read_text())
    _render_ablations(ablation["meta"], ablation["rows"])


def _study_command(argv: list[str]) -> str:
    """The command that makes the whole report: this call's, less what only narrows what it trains."""
    kept, skipping = [], False
    for a in argv:
        if a.startswith("--"):
            skipping = a in ("--datasets", "--variants", "--render-only")
        if not skipping:
            kept.append(a)
    return " ".join(["python", "benchmarks/recipe_study.py", *kept])


def _generator_section() -> list[str]:
    path = DOCS / "ablations-generator.json"
    if not path.is_file():
        return []
    g = json.loads(path.read_text())
    meta, rows = g["meta"], g["rows"]
    lines = ["", "## What makes the generator learn (issue: show that the prompts depend on the image)", "",
             f"Command: `{meta['command']}` ({meta['machine']}, {meta['precision']}; "
             f"{meta.get('seconds_of_all_runs', meta['seconds']):,} s of training and testing in all; "
             "`--render-only` re-renders from the cache and "
             f"{meta.get('record') or 'no record'}, training nothing). Embedded backbone at "
             f"{meta['img_size']} px, {meta['epochs']} epochs (warm-up over half, cosine), batch 32, the recipe's "
             f"rate {meta['recipe_lr']:g} for the head in every row, up to {meta['seeds']} seeds. Subsets (train, "
             "test; None: all): " + ", ".join(f"{n} {tuple(v)}" for n, v in meta["splits"].items()) + ". "
             "**Input dependence** is what the image-specific mixtures add: test top-1 minus the top-1 with every "
             "image given the test split's mean mixture (`top1_mean_mixture`), and minus the top-1 with the "
             "mixtures shuffled across images (`top1_shuffled`), in points, mean over seeds. Zero means PGN acts "
             "as an input-independent prompt. Rows with fewer seeds than the header's are runs still to come.", "",
             "| dataset | variant | what changes | prompts: optimiser, lr | test top-1 | per seed | vs recipe | "
             "drop, mean mixture | drop, shuffled | mixture entropy (last epoch) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    base = {r["dataset"]: r for r in rows if r["variant"] == "recipe"}
    for r in rows:
        seeds = ", ".join("div." if a is None else f"{100 * a:.1f}" for a in r["test_top1"])
        b = base.get(r["dataset"])
        diff = (f"{100 * (r['mean'] - b['mean']):+.2f}" if b is not None and r is not b and r["mean"] is not None
                and b["mean"] is not None else "")
        drop = {k: (f"{100 * statistics.mean(v):+.2f}" if v else "n/a") for k, v in r["input_dependence"].items()}
        entropy = r.get("mixture_entropy_last")
        lines.append(f"| {r['dataset']} | {r['variant']} | {r['what']} | {r['optimizer_name']} {r['lr']:g} | "
                     f"{_cell(r, meta['seeds'])} | {seeds} | {diff} | {drop['mean_mixture']} | {drop['shuffled']} | "
                     + ("n/a" if entropy is None else f"{entropy:.3f}") + " |")
    return lines


def _optimizer_stats(runs: list[Path]) -> dict:
    """Means over seeds of what the optimiser monitor logged (pgn.training.monitor), first and last epoch."""
    rows = [read_metrics(r) for r in runs if (r / "metrics.jsonl").is_file()]
    rows = [r for r in rows if r and "grad_norm/generator" in r[0]]
    if not rows:
        return {}
    out = {}
    for key in ("grad_norm/generator", "grad_norm/library", "grad_norm/head", "update/generator", "update/library",
                "update/head", "mixture_entropy", "clip_factor"):
        for when, i in (("first", 0), ("last", -1)):
            values = [r[i][key] for r in rows if key in r[i]]
            if values:
                out[f"{key}@{when}"] = statistics.mean(values)
    return out


def _cell(s: dict, seeds: int) -> str:
    n = len(s["test_top1"])
    if n == 1 and s["mean"] is not None:
        return f"{100 * s['mean']:.2f} (1 seed)"
    return _pct(s) + ("" if n == seeds else f" ({n} seeds)")


def _pct(s: dict) -> str:
    if s["mean"] is None:
        return "diverged"
    cell = f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"
    return cell + (f" ({s['diverged_seeds']} diverged)" if s.get("diverged_seeds") else "")


def _render_ablations(meta: dict, rows: list[dict]) -> None:
    base = next(r for r in rows if r["method"] == "pgn" and r["variant"] == "recipe")
    lines = ["# Ablations of the training recipe", "",
             f"Command: `{meta['command']}` (rendered on {meta['machine']} in {meta['seconds']:,} s; finished runs "
             f"come from the cache; the runs' precision: {meta['precision']}). ELPV ({meta['split'][0]:,} train, a stratified seed-0 "
             f"subset of the 1,968; {meta['split'][1]} test), embedded backbone "
             f"at {meta['img_size']} px, {meta['epochs']} epochs (warm-up over half), batch 32, SGD momentum 0.9, "
             f"{meta['seeds']} seeds per row. The recipe's rate was chosen on the validation split from "
             f"{meta['grid']}: " + ", ".join(f"{lr} -> {100 * v:.2f}" if v is not None else f"{lr} -> diverged"
                                             for lr, v in meta["recipe_val_top1_by_lr"].items())
             + f"; chosen {meta['recipe_lr']:g}. Every PGN row trains at that rate and changes one thing "
             "(except `old-defaults`, which restores all of the previous defaults at once). Test top-1 (%), "
             "mean ± std over seeds; per-seed numbers in [ablations.json](ablations.json).", "",
             "| method | variant | what changes | lr (head) | test top-1 | per seed | vs recipe (points) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = ", ".join("div." if a is None else f"{100 * a:.1f}" for a in r["test_top1"])
        diff = (f"{100 * (r['mean'] - base['mean']):+.2f}" if r["method"] == "pgn" and r["mean"] is not None
                and r is not base else "")
        head = r.get("head_lr")
        lr = f"{r['lr']:g}" + (f" (head {head:g})" if head is not None and head != r["lr"] else "")
        lines.append(f"| {r['method']} | {r['variant']} | {r['what']} | {lr} | {_pct(r)} | {seeds} | {diff} |")
    lines += ["", "## What the optimiser did (pgn.training.monitor, mean over the 3 seeds)", "",
              "Per step, averaged over the first / last epoch: the gradient norm of each trained part and the "
              "relative size of its update `|Δθ| / |θ|`, and the normalised entropy of the prompt mixtures "
              "(1 = uniform over the library). The rows old-defaults and zero-head were logged before the update "
              "measure divided by the larger of the norms before and after the step, so their head's first-epoch "
              "update divides by the zero start and is meaningless.", "",
              "| variant | grad generator | grad library | grad head | update generator | update library | "
              "update head | mixture entropy | clip factor |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o = r.get("optimizer") or {}
        if not o:
            continue

        def pair(key, fmt):
            a, b = o.get(f"{key}@first"), o.get(f"{key}@last")
            return "n/a" if a is None else f"{a:{fmt}} / {b:{fmt}}"

        lines.append(f"| {r['variant']} | {pair('grad_norm/generator', '.3g')} | {pair('grad_norm/library', '.3g')} | "
                     f"{pair('grad_norm/head', '.3g')} | {pair('update/generator', '.1e')} | "
                     f"{pair('update/library', '.1e')} | {pair('update/head', '.1e')} | "
                     f"{pair('mixture_entropy', '.3f')} | {pair('clip_factor', '.2f')} |")
    pert = DOCS / "perturbation.json"
    if pert.is_file():
        p = json.loads(pert.read_text())
        lines += ["", "## The prompts' effect before any training", "",
                  f"`python benchmarks/recipe_study.py perturbation` ({p['images']} ELPV test images, {p['seeds']} "
                  "initialisations each): how far the untrained prompts move the CLS feature from the plain "
                  "backbone's (cosine 1 and change 0 would be a neutral start).", "",
                  "| setup | cosine to the plain feature | relative change |", "|---|---|---|"]
        for name, v in p["results"].items():
            lines.append(f"| {name} | {v['cosine']:.3f} | {v['relative_change']:.3f} |")
    lines += _generator_section()
    with atomic_path(DOCS / "ablations.md") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


def convergence(args) -> None:
    t0 = time.time()
    backbone, pre, cfg = _setup(args)
    ablation = json.loads((DOCS / "ablations.json").read_text())
    lrs = {r["method"]: r["lr"] for r in ablation["rows"] if r["variant"] == "recipe"}
    results: dict = {}
    specs = {name: _data(name, pre) for name in args.datasets}
    runner = Runner(backbone, cfg, lambda line: print(line, flush=True))
    # Cheapest first (short budgets before long ones), so an interrupted study has the most points.
    for epochs in sorted(args.budgets):
        for name, data in specs.items():
            for method in args.methods:
                root = run_root(cfg, name, data, epochs)
                lr = lrs.get(method, lrs["pgn"])
                seeds = cfg.seeds
                if args.render_only:  # the seeds measured so far (0, 1, ...); a budget with none is left out
                    seeds = next((s for s in range(cfg.seeds)
                                  if finished_result(cfg, run_key(root, method, "test", lr, s)) is None), cfg.seeds)
                    if seeds == 0:
                        continue
                s = select_and_test(runner, root, method, data, None, [lr], seeds, epochs=epochs)
                results.setdefault(name, {}).setdefault(method, {})[epochs] = s
    if not results:  # nothing to report: keep the pages as they are rather than overwrite them with nothing
        raise SystemExit(f"error: no convergence run of {', '.join(args.methods)} on {', '.join(args.datasets)} is "
                         f"finished at {cfg.precision} in {cfg.runs} or {cfg.record}; run without --render-only "
                         "to train them, or name the --precision they were made in")
    meta = {**_meta(args, cfg, t0), "seeds": cfg.seeds, "lrs": lrs, "budgets": sorted(args.budgets),
            "splits": {name: [len(d.train), len(d.test)] for name, d in specs.items()}}
    _render_convergence(meta, results)
    write_json(DOCS / "convergence.json", {"meta": meta, "results": results})


def _render_convergence(meta: dict, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    lines = ["# Convergence: test accuracy against the training budget", "",
             f"Command: `{meta['command']}` ({meta['machine']}, {meta['seconds']:,} s for this call; it read the "
             f"{meta['precision']} cache, and each run's own precision is in the tables). Embedded backbone at "
             f"{meta['img_size']} px; each budget is its own run (warm-up over half, "
             f"cosine), {meta['seeds']} seeds; training images: "
             + ", ".join(f"{n} {tr:,} (test {te:,})" for n, (tr, te) in meta["splits"].items())
             + f"; budgets not listed for a method were not run; rates fixed at the ablation budget's validation choice "
             f"({', '.join(f'{m} {lr:g}' for m, lr in meta['lrs'].items())}). Test top-1 (%), mean ± std. "
             "Raw numbers in [convergence.json](convergence.json).", "", "![test top-1 against epochs](convergence.png)", ""]
    for ax, (name, res) in zip(axes[0], results.items()):
        budgets = sorted({int(e) for per in res.values() for e in per})
        lines += [f"## {name}", "", "| method | " + " | ".join(f"{e} epochs" for e in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for method, per in res.items():
            per = {int(e): s for e, s in per.items()}
            lines.append(f"| {method} | " + " | ".join(_cell(per[e], meta["seeds"]) if e in per else "not run"
                                                      for e in budgets) + " |")
            # what each run recorded (runs made before the precision was stored say "not recorded")
            lines.append(f"| {method}: precision | " + " | ".join(per[e].get("precision") or "not recorded" if e in per
                                                                 else "" for e in budgets) + " |")
            xs = [e for e in budgets if e in per and per[e]["mean"] is not None]
            ax.errorbar(xs, [100 * per[e]["mean"] for e in xs], yerr=[100 * per[e]["std"] for e in xs],
                        marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("epochs")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(name)
        ax.legend()
        lines.append("")
    fig.tight_layout()
    fig.savefig(DOCS / "convergence.png", dpi=110)
    with atomic_path(DOCS / "convergence.md") as tmp:
        Path(tmp).write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=("perturbation", "ablations", "convergence", "generator"))
    p.add_argument("--epochs", type=int, default=3, help="ablation budget (default 3)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--grid", type=float, nargs="+", default=[0.01, 0.1])
    p.add_argument("--variants", nargs="+", default=None,
                   help=f"ablations to run (default: {' '.join(DEFAULT_VARIANTS)}; also head-lr-div10 gen-out-zero); "
                        "generator: all of prompt-lr-x3 prompt-lr-x10 adamw-prompts out-scale4 gen-size56")
    p.add_argument("--datasets", nargs="+", default=["elpv", "fashion-mnist"],
                   help="generator: the datasets this call trains (the report covers every one with records)")
    p.add_argument("--methods", nargs="+", default=["linear", "pgn"])
    p.add_argument("--budgets", type=int, nargs="+", default=[1, 3, 10])
    # The generator phase keeps its own runs: every one of them is seeded and scores the mixture ablation,
    # which the recipe study's older records (drawn from the process's RNG) do not.
    p.add_argument("--runs", default=None, help="default runs/recipe-study (generator: runs/generator-study)")
    p.add_argument("--record", default=None,
                   help="committed copy of every finished run's result, so the study resumes from a fresh clone "
                        "('' for none; default docs/records/recipe-study, generator: docs/records/generator-study)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 where the CPU runs it natively (part of every run's cache key)")
    p.add_argument("--render-only", action="store_true",
                   help="ablations, convergence, generator: the report from finished runs; train nothing")
    args = p.parse_args()
    study = "generator-study" if args.phase == "generator" else "recipe-study"
    args.runs = args.runs or f"runs/{study}"
    args.record = f"docs/records/{study}" if args.record is None else args.record
    try:
        {"perturbation": perturbation, "ablations": ablations, "convergence": convergence,
         "generator": generator}[args.phase](args)
    except NotCached as missing:  # only a render-only call raises it: one run the report needs is not finished
        raise SystemExit(f"error: --render-only, but the run {missing} is not finished; run without --render-only "
                         "to train it, or name the --precision the report's runs were made in") from None


if __name__ == "__main__":
    main()
