"""Pictures of a run: prompt mixtures per image and training curves (matplotlib, Agg)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .files import atomic_path  # noqa: E402


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, 3, H, W) normalised -> (B, H, W, 3) RGB in [0, 1]."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (images.cpu().float() * s + m).clamp(0, 1).permute(0, 2, 3, 1)


def plot_prompt_mixtures(images: torch.Tensor, coefficients: torch.Tensor, titles: list[str],
                         mean, std, path: str | Path) -> Path:
    """Each image beside its (K, N) mixture coefficients over the token library as a heat map."""
    n = images.shape[0]
    fig, axes = plt.subplots(n, 2, figsize=(11, 2.2 * n + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 5], "hspace": 0.55})
    rgb = denormalize(images, mean, std)
    vmax = float(coefficients.max())
    for i in range(n):
        axes[i, 0].imshow(rgb[i])
        axes[i, 0].set_title(titles[i], fontsize=8)
        axes[i, 0].axis("off")
        im = axes[i, 1].imshow(coefficients[i].cpu().float(), aspect="auto", cmap="magma", vmin=0, vmax=vmax)
        axes[i, 1].set_ylabel("prompt k", fontsize=8)
        axes[i, 1].tick_params(labelsize=7)
    axes[-1, 1].set_xlabel("library token n", fontsize=8)
    fig.colorbar(im, ax=axes[:, 1].tolist(), fraction=0.02, pad=0.01, label="mixture coefficient")
    fig.suptitle("PGN prompt mixtures: each prompt token is a softmax mixture over the token library", fontsize=10)
    return _save(fig, path)


def plot_training_curves(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss and accuracy per epoch from ``metrics.jsonl`` rows; where the rows carry them (since the
    optimiser monitor), a second line of panels: per-group gradient norms, relative update sizes and
    the mixture entropy (``pgn.training.monitor``)."""
    ep = [r["epoch"] for r in rows]
    groups = sorted({k.split("/", 1)[1] for r in rows for k in r if k.startswith("grad_norm/")})
    has_mix = any("mixture_entropy" in r for r in rows)
    lines = 2 if groups else 1
    fig, axes = plt.subplots(lines, 3 if has_mix and groups else 2, figsize=(13.5 if has_mix else 9, 3.2 * lines),
                             squeeze=False)
    a, b = axes[0][0], axes[0][1]
    scored = [r for r in rows if "test_top1" in r]  # a run with eval_every > 1 scores the test split less often
    a.plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    a.plot([r["epoch"] for r in scored], [r["test_loss"] for r in scored], "o-", label="test")
    a.set_xlabel("epoch"), a.set_ylabel("cross-entropy"), a.legend()
    b.plot(ep, [r["train_top1"] for r in rows], "o-", label="train top-1")
    b.plot([r["epoch"] for r in scored], [r["test_top1"] for r in scored], "o-", label="test top-1")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy"), b.legend()
    used = [a, b]
    if groups:
        g, u = axes[1][0], axes[1][1]
        for name in groups:
            g.plot(ep, [r.get(f"grad_norm/{name}", float("nan")) for r in rows], "o-", label=name)
            u.plot(ep, [r.get(f"update/{name}", float("nan")) for r in rows], "o-", label=name)
        g.set_yscale("log"), g.set_xlabel("epoch"), g.set_ylabel("gradient norm (mean per step)"), g.legend(fontsize=7)
        u.set_yscale("log"), u.set_xlabel("epoch"), u.set_ylabel("|update| / |weights| per step"), u.legend(fontsize=7)
        used += [g, u]
        if any("clip_factor" in r for r in rows):
            g.set_title("clipping scaled gradients by " + ", ".join(f"{r.get('clip_factor', 1):.2f}" for r in rows),
                        fontsize=8)
    if has_mix and groups:
        m = axes[1][2]
        m.plot(ep, [r.get("mixture_entropy", float("nan")) for r in rows], "o-", label="entropy / log N")
        m.plot(ep, [r.get("mixture_max_coefficient", float("nan")) for r in rows], "o-", label="largest coefficient")
        m.set_ylim(0, 1.05), m.set_xlabel("epoch"), m.set_ylabel("prompt mixtures (train)"), m.legend(fontsize=7)
        used.append(m)
        axes[0][2].axis("off")
    for ax in used:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # epochs are whole
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def plot_class_token_usage(usage: torch.Tensor, class_names: list[str], path: str | Path, title: str = "") -> Path:
    """(C, N) mean mixture coefficient of each library token per class, as a heat map."""
    fig, ax = plt.subplots(figsize=(11, 0.35 * len(class_names) + 1.6))
    im = ax.imshow(usage.cpu().float(), aspect="auto", cmap="magma")
    ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
    ax.set_xlabel("library token n")
    fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01, label="mean coefficient")
    ax.set_title(title or "library tokens used per class (mean over images and prompt slots)", fontsize=10)
    return _save(fig, path)


def plot_prompt_patches(images: torch.Tensor, patches: torch.Tensor, titles: list[str], mean, std,
                        path: str | Path) -> Path:
    """Each image beside its K prompt patches (B, K, 3, P, P), enlarged, in RGB."""
    n, k = patches.shape[:2]
    fig, axes = plt.subplots(n, k + 1, figsize=(1.1 * (k + 1), 1.25 * n + 0.4), squeeze=False)
    rgb = denormalize(images, mean, std)
    prgb = denormalize(patches.flatten(0, 1), mean, std).reshape(n, k, *patches.shape[-2:], 3)
    for i in range(n):
        axes[i, 0].imshow(rgb[i])
        axes[i, 0].set_title(titles[i], fontsize=6)
        for j in range(k):
            axes[i, j + 1].imshow(prgb[i, j], interpolation="nearest")
        for a in axes[i]:
            a.axis("off")
    fig.suptitle("prompt patches (what the model sees in the input), enlarged", fontsize=9)
    return _save(fig, path)


def plot_canvases(originals: torch.Tensor, canvases: torch.Tensor, titles: list[str], mean, std,
                  path: str | Path) -> Path:
    """Original images beside the prompted canvases an unmodified model receives."""
    n = originals.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.8 * n, 4.0), squeeze=False)
    a, b = denormalize(originals, mean, std), denormalize(canvases, mean, std)
    for i in range(n):
        axes[0, i].imshow(a[i])
        axes[0, i].set_title(titles[i], fontsize=7)
        axes[1, i].imshow(b[i], interpolation="nearest")
        axes[0, i].axis("off"), axes[1, i].axis("off")
    axes[0, 0].text(-0.1, 0.5, "input", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, "canvas", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    return _save(fig, path)
