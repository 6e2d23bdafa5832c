"""Figure helpers: image grids, spectra, curves. Figures are saved as PNG and PDF."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np


def save_figure(fig, path_stem) -> list[Path]:
    """Save `fig` as `<stem>.png` (and `.pdf`); returns the paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in (".png", ".pdf"):
        p = stem.with_suffix(ext)
        tmp = p.with_name(f".{p.stem}.tmp{ext}")
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        tmp.replace(p)
        out.append(p)
    return out


def image_grid(rows: dict, n_cols: int = 8, title: str | None = None, scale: float = 1.0):
    """One row of images per key: {row label: uint8 array (n, H, W, 3)}."""
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(n_cols * scale, len(rows) * scale), squeeze=False)
    for r, (label, imgs) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c < len(imgs):
                ax.imshow(imgs[c], interpolation="nearest")
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.04, hspace=0.04)
    return fig


def spectra_figure(spectra: dict, reference: str = "real", title: str | None = None):
    """Mean log spectra per group (top) and their difference from `reference` (bottom): the fingerprints."""
    keys = list(spectra)
    fig, axes = plt.subplots(2, len(keys), figsize=(1.9 * len(keys), 4.0), squeeze=False)
    ref = spectra[reference]
    diffs = [spectra[k] - ref for k in keys]
    lim = float(np.percentile(np.abs(np.stack(diffs)), 99.9)) or 1.0
    lo, hi = np.percentile(np.stack(list(spectra.values())), [1, 99.9])  # the DC bin (mean removed) is ~ -18
    for i, k in enumerate(keys):
        axes[0, i].imshow(spectra[k], cmap="viridis", vmin=lo, vmax=hi)
        axes[0, i].set_title(k, fontsize=9)
        im = axes[1, i].imshow(diffs[i], cmap="RdBu_r", vmin=-lim, vmax=lim)
        for ax in axes[:, i]:
            ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].set_ylabel("mean log power", fontsize=8)
    axes[1, 0].set_ylabel(f"minus {reference}", fontsize=8)
    fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8, label="log power difference")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def curves(histories: dict, keys, title: str | None = None, smooth: int = 10):
    """Training curves: {model: [{'step': s, key: value}, ...]} -> one panel per model."""
    fig, axes = plt.subplots(1, len(histories), figsize=(3.2 * len(histories), 2.6), squeeze=False)
    for ax, (name, hist) in zip(axes[0], histories.items()):
        for k in keys:
            vals = np.array([h[k] for h in hist if k in h], dtype=float)
            if len(vals) == 0:
                continue
            w = max(1, min(smooth, len(vals) // 5 or 1))
            ax.plot(np.arange(len(vals) - w + 1) + w, np.convolve(vals, np.ones(w) / w, "valid"), label=k)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def robustness_figure(long, detector: str, metric: str = "bacc", note: str = "synthetic stand-in data"):
    """One detector's robustness: `metric` (mean over seeds) over JPEG quality x centre-crop ratio, and
    against Gaussian blur (sigma 0 = clean), from the long table of `evaluation.robustness`."""
    d = long[long["detector"] == detector]
    grid = d[d["blur_sigma"] == 0].groupby(["jpeg_quality", "crop_ratio"], sort=False)[metric].mean().unstack()
    grid = grid[sorted(grid.columns, reverse=True)]
    blur = d[(d["jpeg_quality"] == "none") & (d["crop_ratio"] == 1.0)].groupby("blur_sigma")[metric].agg(["mean", "std"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3), gridspec_kw={"width_ratios": [1.3, 1]})
    im = a.imshow(grid.to_numpy(dtype=float), vmin=0.0, vmax=1.0, cmap="viridis")
    for (i, j), v in np.ndenumerate(grid.to_numpy(dtype=float)):
        a.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="w" if v < 0.75 else "k")
    a.set_xticks(range(grid.shape[1]), [f"{c:g}" for c in grid.columns])
    a.set_yticks(range(grid.shape[0]), [str(r) for r in grid.index])
    a.set_xlabel("centre-crop ratio (resized back)")
    a.set_ylabel("JPEG quality")
    fig.colorbar(im, ax=a, fraction=0.046)
    b.errorbar(blur.index, blur["mean"], yerr=blur["std"].fillna(0), marker="o", capsize=3)
    b.set_xlabel("Gaussian blur sigma (px)")
    b.set_ylabel(metric)
    b.set_ylim(0, 1.02)
    fig.suptitle(f"{detector}: {metric} under post-processing, both classes ({note})", fontsize=9)
    fig.tight_layout()
    return fig
