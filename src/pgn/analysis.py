"""Pictures and numbers that explain a trained PGN: curves, token usage, input dependence, prompt patches."""
from __future__ import annotations

from pathlib import Path

import torch

from .data import build_dataset
from .files import write_json
from .layouts import PatchInverter
from .model import PromptedClassifier
from .plots import plot_canvases, plot_class_token_usage, plot_prompt_patches, plot_training_curves
from .training import read_metrics
from .training.monitor import mixture_sharpness


def pick_per_class(labels: torch.Tensor, num_classes: int, n: int) -> list[int]:
    """Up to ``n`` indices, the first few of each class in turn, for pictures that show every class."""
    per = max(1, n // num_classes)
    picks = [i for c in range(num_classes) for i in (labels == c).nonzero().flatten()[:per].tolist()]
    return picks[:n]


def input_dependence(prompts: torch.Tensor, labels: torch.Tensor) -> dict:
    """How much prompts vary with the input: (n, K, D) prompts, (n,) labels.

    ``within``: mean distance of an image's prompts to its class centroid; ``between``: mean
    distance of class centroids to the global centroid; ``total``: mean distance to the global
    centroid. IIP prompts give 0 for all three.
    """
    flat = prompts.flatten(1).double()
    centre = flat.mean(0)
    cents = {int(c): flat[labels == c].mean(0) for c in labels.unique()}
    within = torch.stack([(flat[i] - cents[int(labels[i])]).norm() for i in range(len(flat))]).mean()
    between = torch.stack([(c - centre).norm() for c in cents.values()]).mean()
    return {"within_class": float(within), "between_class": float(between),
            "total": float((flat - centre).norm(dim=1).mean())}


@torch.no_grad()
def initial_perturbation(model, images: torch.Tensor) -> dict:
    """How much a classifier's prompts move the backbone's feature before any training.

    ``images``: (B, 3, H, W) normalised. Compares the prompted feature ``model.features(x)``
    with the unprompted ``model.backbone(x)``: mean cosine similarity and mean relative
    change ``||f_p - f|| / ||f||``. A PGN that started neutral would give 1 and 0.
    """
    model.eval()
    plain = model.backbone(images).float()
    prompted = model.features(images).float()
    cos = torch.nn.functional.cosine_similarity(prompted, plain, dim=-1)
    rel = (prompted - plain).norm(dim=-1) / plain.norm(dim=-1)
    return {"cosine": float(cos.mean()), "relative_change": float(rel.mean()),
            "feature_norm": float(plain.norm(dim=-1).mean())}


def dataset_token_sharing(coeffs: torch.Tensor, labels: torch.Tensor, parts: list[dict], path: Path) -> dict:
    """Which library tokens each dataset uses, and how much two datasets' usage overlaps.

    Usage of dataset d = its mean softmax coefficients (a distribution over the N tokens);
    overlap of d and e = histogram intersection sum_n min(u_d[n], u_e[n]) in [0, 1].
    """
    owner = torch.cat([torch.full((len(p["classes"]),), i) for i, p in enumerate(parts)])[labels]
    usage = torch.stack([coeffs[owner == i].mean(dim=(0, 1)) for i in range(len(parts))])
    plot_class_token_usage(usage, [p["name"] for p in parts], path, title="library tokens per dataset")
    names = [p["name"] for p in parts]
    overlap = {f"{names[a]}~{names[b]}": float(torch.minimum(usage[a], usage[b]).sum())
               for a in range(len(parts)) for b in range(a + 1, len(parts))}
    top = {names[i]: usage[i].topk(min(8, usage.shape[1])).indices.tolist() for i in range(len(parts))}
    return {"overlap": overlap, "top_tokens": top, "picture": str(path)}


@torch.inference_mode()
def analyze_run(run_dir: str | Path, out_dir: str | Path | None = None, max_images: int = 1000,
                n_pictures: int = 6, data=None) -> dict:
    """Write ``curves.png``, ``token_usage.png``, ``prompt_patches.png`` (and ``canvases.png`` for
    input-space layouts) and ``analysis.json`` into ``out_dir`` (default: the run directory)."""
    run_dir = Path(run_dir)
    out = Path(out_dir or run_dir)
    model = PromptedClassifier.from_pretrained(run_dir)
    cfg = model.config
    model.eval()
    result: dict = {"run": str(run_dir), "method": cfg.method, "layout": cfg.layout}
    rows = read_metrics(run_dir)
    if rows:
        plot_training_curves(rows, out / "curves.png", title=f"{cfg.method} on {cfg.dataset}")
        result["curves"] = str(out / "curves.png")
        result["final"] = rows[-1]
        for key in ("test_top1", "test_top1_mean_mixture", "test_top1_shuffled"):  # input dependence (PGN)
            if key in rows[-1]:
                result[key] = rows[-1][key]
    if cfg.method != "pgn":
        write_json(out / "analysis.json", result)
        return result
    parts = cfg.extra.get("datasets")
    if data is None and parts:
        from .multi import combine

        data, _ = combine([build_dataset(p["name"], img_size=cfg.img_size, mean=cfg.mean, std=cfg.std,
                                         test_limit=max(1, max_images // len(parts))) for p in parts])
    elif data is None:
        data = build_dataset(cfg.dataset, img_size=cfg.img_size, mean=cfg.mean, std=cfg.std, test_limit=max_images)
    test = data.test
    loader = torch.utils.data.DataLoader(test, batch_size=64)
    coeffs, prompts, labels = [], [], []
    for x, y in loader:
        c = model.prompts.coefficients(x)
        coeffs.append(c)
        prompts.append(model.prompts.library(c))
        labels.append(y)
    coeffs, prompts, labels = torch.cat(coeffs), torch.cat(prompts), torch.cat(labels)
    usage = torch.stack([coeffs[labels == c].mean(dim=(0, 1)) if (labels == c).any()
                         else torch.zeros(coeffs.shape[-1]) for c in range(len(cfg.class_names))])
    plot_class_token_usage(usage, cfg.class_names, out / "token_usage.png", title=f"library tokens per class ({cfg.dataset})")
    result["input_dependence"] = input_dependence(prompts, labels)
    result["mixture_sharpness"] = mixture_sharpness(coeffs)
    if parts:
        result["datasets"] = dataset_token_sharing(coeffs, labels, parts, out / "dataset_tokens.png")
    result["tokens_used"] = int((usage.max(0).values > 1.0 / coeffs.shape[-1]).sum())  # above uniform weight for some class
    result["library_size"] = int(coeffs.shape[-1])

    # A few images (classes alternating) and their prompt patches as the model would see them.
    picks = pick_per_class(labels, len(cfg.class_names), n_pictures)
    x = torch.stack([test[i][0] for i in picks])
    c = model.prompts.coefficients(x)
    if cfg.generator.get("library_space") == "pixel":
        patches = model.prompts.library.patches(c)
    else:
        bb = model.backbone
        inv = PatchInverter(bb.patch_embed_weight(), bb.patch_embed_bias(), cfg.mean, cfg.std)(model.prompts.library(c))
        patches = inv.patches.float()
        result["inversion_residual_max"] = float(inv.residual.max())
    titles = [cfg.class_names[int(labels[i])] for i in picks]
    plot_prompt_patches(x, patches, titles, cfg.mean, cfg.std, out / "prompt_patches.png")
    if cfg.layout != "append":
        plot_canvases(x, model.layout.compose(x, patches), titles, cfg.mean, cfg.std, out / "canvases.png")
    write_json(out / "analysis.json", result)
    return result
