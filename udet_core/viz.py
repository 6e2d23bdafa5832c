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
