"""Training through a model you can only query: test top-1 against images sent, on a real KServe server.

    python benchmarks/blackbox_study.py                 # trains what is missing, then docs/blackbox-study.md
    python benchmarks/blackbox_study.py --render-only   # the report from docs/records/blackbox-study
    python benchmarks/blackbox_study.py --methods readout zo-vp   # trains only what is named

The model is EfficientNet-Lite0 (ImageNet-1k, its 1000 scores and nothing else), served unmodified by a real
KServe model server on 127.0.0.1 and reached through the Open Inference Protocol with 8-bit canvases. The
client never loads its weights: every forward of training and of evaluation is a call (``pgn.blackbox``), and
the model's preprocessing is given as a user reads it off the model card (mean 127/255, std 128/255, 128 px,
16 px prompt cells), since the protocol does not publish it. The tasks are the hosted study's
(docs/hosted-classifier.md) at 128 px, 500 training images (stratified, seed 0): ELPV with all 656 test images,
Fashion-MNIST with 500 (``--tasks``; the report covers every task with records).

Rows (``METHODS``):
    readout      no prompt: a linear readout of the scores (BatchNorm + linear), one query per training image,
                 then exact gradients on the client (Adam, ``head_lr``, ``readout_epochs`` passes)
    zo-vp        bounded VP (Bahng et al.'s frame, clamped to valid pixels), SPSA-GC through the endpoint,
                 warm-started from the readout of the same seed, whose head keeps training with exact
                 gradients on the answered scores
    zo-pgn       PGN with a pixel library in the frame layout (K=8, N=16), SPSA-GC in a hashed subspace of
                 64 directions over all its parameters, its readout first fitted on the canvases as built
                 (``readout_warmup``, one more query per training image)
    zo-vp-flm    bounded VP with the frequency label mapping (nothing trained on the client), BlackVIP's
                 settings unchanged
    zo-pgn-flm   the PGN of zo-pgn with the frequency label mapping

SPSA-GC's settings are BlackVIP's (a=0.01, c=0.01, alpha=0.4, gamma=0.1, o=1, q=5, momentum 0.9) except where
``METHODS`` names another: the readout rows use a=0.0005 and c=0.05, chosen on sklearn's digits (a
measurement on another task, not on this one's validation split: a named deviation; BlackVIP's a=0.01
destroyed the readout's accuracy there). No rate was chosen on validation here: this study measures the cost
in queries of the settings a user starts with.

Each seed's run is trained to the first budget of ``BUDGETS`` (images sent, everything counted: the probe, the
readout's or mapping's pass, every step, and one evaluation of the test images per budget), evaluated
through the endpoint, then resumed bit-exactly to the next budget (``pgn.resume_through_api``): one run gives
the whole curve. The label-mapping rows ran on ELPV only (BlackVIP's settings left them near 50 % there).
Runs live under ``runs/blackbox``; each budget's result is recorded in
``docs/records/blackbox-study/<task>/<method>/seed<s>-q<budget>.json`` (committed), and a method whose records
reach its last budget is not trained again. The wall time and the endpoint's images per second are recorded.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import statistics
import time
from pathlib import Path

import torch

import pgn
from pgn.data import build_dataset
from pgn.files import atomic_path, write_json
from pgn_study.comparison import device_name

IMG, CELL = 128, 16
TASKS = {"elpv": (500, None), "fashion-mnist": (500, 500)}  # (training images, test images; None: all), as hosted
MEAN, STD = (127 / 255,) * 3, (128 / 255,) * 3  # the TF EfficientNet-Lite configs: (x - 127) / 128 on 0-255
SEEDS = 3
BUDGETS = (2500, 5000, 8000)
_READOUT = {"readout_epochs": 100, "head_lr": 0.001}
_ZO_READOUT = {"spsa_a": 0.0005, "spsa_c": 0.05, **_READOUT}
_PGN = {"library_space": "pixel", "layout": "frame", "num_prompts": 8, "library_size": 16, "generator_size": 56,
        "spsa_subspace": 64}
# name: (pgn method, options, warm start from the readout row's run of the same seed)
METHODS = {  # in the order a seed trains them
    "readout": ("linear", dict(_READOUT), False),
    "zo-vp": ("vp", {"bounded": True, "head": "linear", **_ZO_READOUT}, True),
    "zo-pgn": ("pgn", {**_PGN, "head": "linear", "readout_warmup": True, **_ZO_READOUT}, False),
    "zo-vp-flm": ("vp", {"bounded": True, "head": "labelmap-flm"}, False),
    "zo-pgn-flm": ("pgn", {**_PGN, "head": "labelmap-flm"}, False),
}
RECORD = Path("docs/records/blackbox-study")
RUNS = Path("runs/blackbox")
DOC = Path("docs/blackbox-study.md")
HOSTED = Path("docs/hosted-classifier.json")  # the same task trained with the model's weights (gradients)


def _hosted_endpoint():
    """The hosted study's KServe server (benchmarks/hosted_classifier.py): the same model, the same protocol."""
    spec = importlib.util.spec_from_file_location("hosted_classifier", Path(__file__).with_name("hosted_classifier.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Endpoint


def record_path(task: str, method: str, seed: int, budget: int) -> Path:
    return RECORD / task / method / f"seed{seed}-q{budget}.json"


def run_seed(task: str, method: str, seed: int, url: str, data, budgets: tuple, log, again: bool = False) -> None:
    """Train ``method``'s seed to every budget, recording each; a finished seed is left as it is (``again``:
    trained anew all the same, for a run folder another row starts from)."""
    name, options, warm = METHODS[method]
    budgets = (None,) if name == "linear" else budgets
    run = RUNS / task / method / f"seed{seed}"
    if record_path(task, method, seed, budgets[-1] or 0).is_file() and not (again and not run.is_dir()):
        return
    if run.exists():  # an earlier call's run without its records: start over (the same seed gives the same run)
        shutil.rmtree(run)
    init = RUNS / task / "readout" / f"seed{seed}" if warm else None
    if warm and not init.is_dir():
        run_seed(task, "readout", seed, url, data, budgets, log, again=True)
    for i, budget in enumerate(budgets):
        t0 = time.perf_counter()
        common = dict(max_queries=budget, progress=False, log=lambda line: None)
        if i == 0:
            steps = None if name == "linear" else 10_000  # the budget stops it
            row = pgn.train_through_api(url, data, name, run, api_kind="oip", api_model="classifier", mean=MEAN,
                                        std=STD, img_size=IMG, cell_size=CELL, init=init, seed=seed, steps=steps,
                                        **common, **options)
        else:
            row = pgn.resume_through_api(run, url, **common)
        seconds = time.perf_counter() - t0
        result = {"method": method, "seed": seed, "budget": budget, "seconds": round(seconds, 1),
                  "device": device_name("cpu"), "torch": torch.__version__, "settings": {"method": name, **options},
                  **{k: v for k, v in row.items() if k != "run"}}
        write_json(record_path(task, method, seed, budget or 0), result)
        log(f"{task}/{method}/seed{seed} at {row['images_sent']} images sent: test top-1 through the endpoint "
            f"{row['test_top1']:.4f} ({row.get('stopped')}, {seconds:.0f} s)")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def load() -> dict:
    """{task: {method: {budget: [records of its seeds]}}} from the records."""
    out: dict = {}
    for task in TASKS:
        for path in sorted((RECORD / task).glob("*/seed*-q*.json")):
            r = json.loads(path.read_text())
            out.setdefault(task, {}).setdefault(r["method"], {}).setdefault(r["budget"] or 0, []).append(r)
    return out


def render(results: dict) -> str:
    lines = ["# Training through an endpoint, measured", "",
             "Rendered by `python benchmarks/blackbox_study.py --render-only` from "
             "`docs/records/blackbox-study`; the protocol is the script's docstring. "
             "EfficientNet-Lite0 (ImageNet-1k, scores only) behind a real KServe server on 127.0.0.1; "
             f"{IMG} px. The client never loads the model's "
             "weights: every training and test forward is a call with 8-bit canvases. Images sent count "
             "everything a run sent (the probe, the readout's or mapping's pass, every step, one evaluation of "
             "the test split per budget). Test top-1 (%) through the endpoint, mean ± std over the seeds.", ""]
    for task, methods in results.items():
        lines += render_task(task, methods)
    machines = sorted({s["device"] for m in results.values() for r in m.values() for seeds in r.values()
                       for s in seeds})
    lines += [f"Machines, as the records name them: {'; '.join(machines) or 'none yet'}. The server and the "
              "client share the machine's 2 cores with the other studies' runs, so the images per second are a "
              "floor, not the server's speed.", ""]
    return "\n".join(lines)


def render_task(task: str, results: dict) -> list[str]:
    train, test = TASKS[task]
    tests = {s["test_images"] for r in results.values() for seeds in r.values() for s in seeds
             if s.get("test_images")}
    lines = [f"## {task}", "", f"{train} training images, "
             + (f"{tests.pop():,} test images." if len(tests) == 1 else f"{test or 'all'} test images."), "",
             "| method | budget (images, at most) | images sent | images sent, warm start included | "
             "test top-1, % | seeds | seconds per seed (to this budget) | images/s of the endpoint |",
             "|---|---|---|---|---|---|---|---|"]
    finals = {}
    readout = {s["seed"]: s for s in results.get("readout", {}).get(0, [])}
    for method, (_, _, warm) in METHODS.items():
        stages = sorted(results.get(method, {}).items())
        before = {}  # seed -> (images sent, seconds) at the previous budget: each record is one resumed stage
        for budget, seeds in stages:
            top = [100 * s["test_top1"] for s in seeds]
            m, sd = _mean_std(top)
            sent = statistics.mean(s["images_sent"] for s in seeds)
            with_warm = statistics.mean(s["images_sent"] + (readout[s["seed"]]["images_sent"] if warm else 0)
                                        for s in seeds if not warm or s["seed"] in readout) if seeds else 0
            new_images = sum(s["images_sent"] - before.get(s["seed"], (0, 0))[0] for s in seeds)
            stage_seconds = sum(s["seconds"] for s in seeds)
            secs = statistics.mean(s["seconds"] + before.get(s["seed"], (0, 0))[1] for s in seeds)
            before = {s["seed"]: (s["images_sent"], s["seconds"] + before.get(s["seed"], (0, 0))[1]) for s in seeds}
            lines.append(f"| {method} | {budget or 'one pass'} | {sent:,.0f} | {with_warm:,.0f} | {m:.2f} ± {sd:.2f} | "
                         f"{len(seeds)} | {secs:.0f} | {new_images / stage_seconds:.0f} |")
            finals[method] = (m, sd, len(seeds), budget)
    lines += ["", "A warm-started row (zo-vp) starts from the readout row's run of the same seed: the images that run "
              "sent are counted in the column that includes the warm start."]
    lines.append("")
    if HOSTED.is_file():
        hosted = json.loads(HOSTED.read_text()).get(task, {})
        rows = [(k, r) for k, r in hosted.items() if k != "pgn" and r.get("seeds")]
        if rows:
            lines += ["The same task trained with the model's weights (gradients through a local copy, evaluated "
                      "through the endpoint), from [hosted-classifier.md](hosted-classifier.md):", "",
                      "| method (trained with gradients) | head | test top-1, % | seeds |", "|---|---|---|---|"]
            for k, r in rows:
                m, sd = _mean_std([100 * s["top1"] for s in r["seeds"]])
                lines.append(f"| {k} | {r.get('head')} | {m:.2f} ± {sd:.2f} | {len(r['seeds'])} |")
            lines.append("")
    if "readout" in finals:
        base = finals["readout"]
        lines += ["Each zeroth-order prompt at its largest budget against the readout alone (difference of means ± "
                  "the combined spread sqrt(std_a² + std_b²), points):", ""]
        for method, (m, sd, n, budget) in finals.items():
            if method == "readout":
                continue
            diff, spread = m - base[0], math.hypot(sd, base[1])
            verdict = ("ahead beyond the spread" if diff > spread else "behind beyond the spread" if -diff > spread
                       else "within the spread")
            partial = f" ({n} seed{'s' * (n != 1)} so far)" if n < SEEDS else ""
            lines.append(f"- {method} at {budget:,} images: {diff:+.2f} ± {spread:.2f}, {verdict}{partial}")
        lines.append("")
    return lines


def main() -> None:
    global RECORD, RUNS, DOC
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS),
                    help="train only these (the report shows every task's records)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seeds", type=int, default=SEEDS)
    ap.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), help="images sent, increasing")
    ap.add_argument("--record", default=str(RECORD))
    ap.add_argument("--runs", default=str(RUNS))
    ap.add_argument("--doc", default=str(DOC))
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    RECORD, RUNS, DOC = Path(args.record), Path(args.runs), Path(args.doc)
    log = lambda line: print(line, flush=True)  # noqa: E731
    if not args.render_only:
        endpoint = _hosted_endpoint()(log)
        try:
            for task in args.tasks:
                train, test = TASKS[task]
                data = build_dataset(task, img_size=IMG, mean=MEAN, std=STD, train_limit=train, test_limit=test)
                for seed in range(args.seeds):  # every method's seed s before any method's seed s + 1
                    for method in args.methods:
                        run_seed(task, method, seed, endpoint.url, data, tuple(args.budgets), log)
        finally:
            endpoint.close()
    results = load()
    with atomic_path(DOC) as tmp:
        Path(tmp).write_text(render(results))
    write_json(DOC.with_suffix(".json"), results)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
