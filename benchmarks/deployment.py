"""Input-space deployment on the demo task: how much accuracy survives each layout, and what it costs.

Trains a PGN on ELPV (embedded backbone, 112 px) per layout, then measures test accuracy
  - latent:      the prompted forward the adapter was trained with (fp32);
  - float canvas: the UNMODIFIED model (timm forward_features) on the composed float canvas;
  - uint8 canvas: the same canvas rounded to 8-bit RGB, as a PNG would carry it;
  - API:          PNG canvases sent over HTTP to `pgn serve` (in-process uvicorn on loopback);
plus extra tokens and inference time per image. Writes docs/deployment.md and docs/deployment.json.

    python benchmarks/deployment.py            # ~20 min on 2 cores (bf16-capable CPU)
    python benchmarks/deployment.py --quick    # 1 epoch, 160 test images: a smoke run
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from pgn.adapter_format import adapter_config
from pgn.backbones import create_backbone
from pgn.client import EmbeddingClient
from pgn.data import build_dataset
from pgn.files import write_json
from pgn.input_adapter import InputAdapter, export_adapter
from pgn.model import PromptedClassifier
from pgn.precision import resolve
from pgn.server import create_app
from pgn.training import TrainConfig, read_metrics, run_training
from pgn.training.checkpoint import latest_checkpoint
from pgn.web.background import BackgroundServer

CONFIGS = [  # (layout, library space)
    ("append", "latent"),
    ("extend", "pixel"),
    ("frame", "pixel"),
    ("extend", "latent"),  # latent library deployed through inversion: exact only where the inversion is
]


def batches(n, size):
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


@torch.inference_mode()
def measure(run: Path, data, backbone, batch: int = 32) -> dict:
    model = PromptedClassifier.from_pretrained(run, backbone=backbone)
    cfg = model.config
    model.eval()
    vit = backbone.vit
    labels = torch.as_tensor(data.test.targets)
    n = len(labels)
    grid = (cfg.img_size // backbone.patch_size,) * 2
    out = {"layout": cfg.layout, "library_space": cfg.generator["library_space"], "n_test": n,
           "extra_tokens": model.layout.extra_tokens(grid, cfg.num_prompts),
           "trainable_parameters": model.num_trainable()}
    preds = {"latent": [], "float": [], "uint8": [], "api": []}
    rel_err, t_latent, t_canvas, residual = 0.0, 0.0, 0.0, 0.0
    composer = None
    if cfg.layout != "append":
        export = run / "export"
        export_adapter(run, export)
        composer = InputAdapter.from_pretrained(export)
    server = BackgroundServer(create_app(backbone)) if composer else None
    client = None
    if server:
        server.__enter__()
        client = EmbeddingClient(server.url)
    try:
        for idx in batches(n, batch):
            x = torch.stack([data.test[i][0] for i in idx])
            t0 = time.perf_counter()
            feats = model.features(x)
            t_latent += time.perf_counter() - t0
            preds["latent"].append(model.head(feats).argmax(-1))
            if composer is None:
                continue
            t0 = time.perf_counter()
            canvas = composer.canvas(x)
            f_canvas = vit.forward_features(canvas)[:, 0]  # the unmodified model
            t_canvas += time.perf_counter() - t0
            if composer.last_residual is not None:
                residual = max(residual, float(composer.last_residual.max()))
            rel_err = max(rel_err, float((f_canvas - feats).abs().max() / feats.abs().max()))
            preds["float"].append(model.head(f_canvas).argmax(-1))
            u8 = composer.to_uint8(canvas)
            preds["uint8"].append(model.head(vit.forward_features(composer.from_uint8(u8))[:, 0]).argmax(-1))
            emb, _ = client.embed_png(composer.png_bytes(u8))
            preds["api"].append(composer.logits(emb).argmax(-1))
    finally:
        if server:
            client.close()
            server.__exit__(None, None, None)
    latent = torch.cat(preds["latent"])
    out["acc_latent"] = float((latent == labels).float().mean())
    out["ms_per_image_latent"] = 1000 * t_latent / n
    if composer:
        for k in ("float", "uint8", "api"):
            p = torch.cat(preds[k])
            out[f"acc_{k}"] = float((p == labels).float().mean())
            out[f"agree_{k}"] = float((p == latent).float().mean())
        out["max_rel_feature_error_float"] = rel_err
        out["ms_per_image_canvas"] = 1000 * t_canvas / n
        out["canvas_size"] = list(composer.deploy.canvas_size)
        out["max_inversion_residual"] = residual if not composer.pixel_library else 0.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", default="runs/bench-deployment")
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    if args.quick:
        args.epochs = 1
    backbone = create_backbone()
    pre = backbone.preprocessing
    data = build_dataset("elpv", img_size=112, mean=pre.mean, std=pre.std,
                         test_limit=160 if args.quick else None)
    precision = resolve("auto", "cpu")  # training only; evaluation is fp32
    rows = []
    t_all = time.perf_counter()
    for layout, space in CONFIGS:
        run = Path(args.runs) / f"{layout}-{space}{'-quick' if args.quick else ''}"
        done = len(read_metrics(run)) >= args.epochs
        if not done:
            acfg = adapter_config(backbone, "pgn", data.class_names, img_size=112, library_space=space,
                                  layout=layout, dataset="elpv")
            model = PromptedClassifier.from_config(acfg, backbone)
            cfg = TrainConfig(epochs=args.epochs, lr=0.1, head_lr=0.01, warmup_epochs=1.0, precision=precision,
                              progress=False)
            run_training(model, acfg, data, cfg, run, resume=latest_checkpoint(run) is not None)
        row = measure(run, data, backbone)
        row["epochs"] = args.epochs
        print(json.dumps(row))
        rows.append(row)
    total = time.perf_counter() - t_all
    meta = {"command": "python benchmarks/deployment.py" + (" --quick" if args.quick else ""),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                       f"torch {torch.__version__}", "train_precision": precision,
            "eval_precision": "fp32", "seconds": round(total)}
    out = Path(args.out)
    write_json(out / f"deployment{'-quick' if args.quick else ''}.json", {"meta": meta, "rows": rows})
    if not args.quick:
        write_markdown(out / "deployment.md", rows, meta)


def write_markdown(path: Path, rows, meta) -> None:
    def pct(r, k):
        return f"{100 * r[k]:.2f}" if k in r else "n/a"

    lines = [
        "# Input-space deployment on ELPV (embedded backbone, 112 px)", "",
        f"Command: `{meta['command']}` ({meta['seconds']} s). Machine: {meta['machine']}. "
        f"Training: {meta['train_precision']}; evaluation: {meta['eval_precision']}.", "",
        "Test accuracy (%) on the 656 ELPV test images; agreement = share of test images whose prediction equals "
        "the latent model's. `float`/`uint8` run the unmodified timm model on the composed canvas; `API` sends PNG "
        "canvases to `pgn serve` over HTTP on loopback.", "",
        "| layout | library | latent | float canvas | uint8 canvas | API | agree uint8 / API | max rel. feature error (float) "
        "| extra tokens | canvas |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        agree = f"{pct(r, 'agree_uint8')} / {pct(r, 'agree_api')}" if "agree_api" in r else "n/a"
        err = f"{r['max_rel_feature_error_float']:.1e}" if "max_rel_feature_error_float" in r else "n/a"
        canvas = "x".join(map(str, r.get("canvas_size", []))) or "112x112 + tokens"
        lines.append(f"| {r['layout']} | {r['library_space']} | {pct(r, 'acc_latent')} | {pct(r, 'acc_float')} | "
                     f"{pct(r, 'acc_uint8')} | {pct(r, 'acc_api')} | {agree} | {err} | {r['extra_tokens']} | {canvas} |")
    lines += ["", "Inference speed per layout is measured on a quiet machine by `benchmarks/throughput.py` "
                  "(docs/throughput.md); the ms/image in deployment.json were taken alongside training and are not "
                  "comparable."]
    inv = [r for r in rows if r["library_space"] == "latent" and r["layout"] != "append"]
    for r in inv:
        lines += ["", f"Latent library deployed through inversion ({r['layout']}): max inversion residual "
                      f"{r['max_inversion_residual']:.3g} (max |W x + b - t| after keeping pixels in [0, 1]); a latent "
                      "library is free to leave the set of tokens that real pixels can produce, which is why the "
                      "pixel-space library exists."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--markdown-only"]:  # re-render docs/deployment.md from docs/deployment.json
        saved = json.loads(Path("docs/deployment.json").read_text())
        write_markdown(Path("docs/deployment.md"), saved["rows"], saved["meta"])
    else:
        main()
