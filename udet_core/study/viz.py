"""Figure helpers: image grids, spectra, curves. Figures are saved as PNG and PDF."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from udet_core.data.images import to_uint8
from udet_core.methods.craft import with_settings as craft_with_settings


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


def _inches_to_fig(fig, left, bottom, width, height):
    """A rectangle given in inches from the figure's lower-left corner, in figure coordinates."""
    W, H = fig.get_size_inches()
    return [left / W, bottom / H, width / W, height / H]


def _text_size_in(text: str, fontsize: float) -> tuple[float, float]:
    """Width and height (inches) that `text` takes at `fontsize` (rendered once off-screen)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    f = Figure(dpi=72)
    t = f.text(0, 0, text, fontsize=fontsize)
    bb = t.get_window_extent(renderer=FigureCanvasAgg(f).get_renderer())
    return bb.width / 72, bb.height / 72


def image_grid(rows: dict, n_cols: int = 8, title: str | None = None, scale: float = 1.0,
               label_fontsize: float = 9, title_fontsize: float = 10):
    """One row of images per key: {row label: uint8 array (n, H, W, 3)}.

    Laid out in inches: `scale` inches per image, a left margin as wide as the longest row label, and the title
    right above the top row whatever the number of rows and columns."""
    labels = [str(k) for k in rows]
    gap = 0.04 * scale                                   # between images
    pad = 0.08                                           # label / title to the images
    label_w = max((_text_size_in(lb, label_fontsize)[0] for lb in labels), default=0.0) + pad + 0.05
    title_h = _text_size_in(title, title_fontsize)[1] + pad + 0.05 if title else 0.05
    grid_w = n_cols * scale + (n_cols - 1) * gap
    grid_h = len(rows) * scale + (len(rows) - 1) * gap
    margin = 0.05
    fig = plt.figure(figsize=(label_w + grid_w + margin, grid_h + title_h + margin))
    axes = np.empty((len(rows), n_cols), dtype=object)
    for r, (label, imgs) in enumerate(rows.items()):
        bottom = margin + (len(rows) - 1 - r) * (scale + gap)
        for c in range(n_cols):
            ax = fig.add_axes(_inches_to_fig(fig, label_w + c * (scale + gap), bottom, scale, scale))
            ax.set_xticks([]), ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c < len(imgs):
                ax.imshow(imgs[c], interpolation="nearest")
            axes[r, c] = ax
        axes[r, 0].set_ylabel(str(label), rotation=0, ha="right", va="center", fontsize=label_fontsize,
                              labelpad=pad * 72)
    if title:
        H = fig.get_size_inches()[1]
        x_mid = (label_w + grid_w / 2) / fig.get_size_inches()[0]
        fig.suptitle(title, fontsize=title_fontsize, x=x_mid, y=(margin + grid_h + pad) / H, va="bottom")
    return fig


def spectra_figure(spectra: dict, reference: str = "real", title: str | None = None, max_cols: int = 7,
                   panel: float = 1.2, fontsize: float = 8):
    """Mean log spectra per group (top) and their difference from `reference` (bottom): the fingerprints.

    More than `max_cols` groups wrap into several (spectrum, difference) row pairs of equal columns; every row has
    its own colourbar in a dedicated column, so all image axes share one size and line up. `panel` inches per image
    keep the figure about 10 inches wide, so the text stays readable at the size a notebook shows it."""
    keys = list(spectra)
    n_blocks = -(-len(keys) // max_cols)
    n_cols = -(-len(keys) // n_blocks)
    ref = spectra[reference]
    diffs = {k: spectra[k] - ref for k in keys}
    lim = float(np.percentile(np.abs(np.stack(list(diffs.values()))), 99.9)) or 1.0
    lo, hi = np.percentile(np.stack(list(spectra.values())), [1, 99.9])  # the DC bin (mean removed) is ~ -18
    fig = plt.figure(figsize=(n_cols * panel + 1.4, n_blocks * (2 * panel + 0.45) + (0.35 if title else 0.1)),
                     layout="constrained")
    gs = fig.add_gridspec(2 * n_blocks, n_cols + 1, width_ratios=[1] * n_cols + [0.08])
    for b in range(n_blocks):
        block = keys[b * n_cols:(b + 1) * n_cols]
        for i in range(n_cols):
            top, bot = fig.add_subplot(gs[2 * b, i]), fig.add_subplot(gs[2 * b + 1, i])
            for ax in (top, bot):
                ax.set_xticks([]), ax.set_yticks([])
            if i >= len(block):
                top.set_axis_off(), bot.set_axis_off()
                continue
            k = block[i]
            im_top = top.imshow(spectra[k], cmap="viridis", vmin=lo, vmax=hi)
            top.set_title(k, fontsize=fontsize)
            im_bot = bot.imshow(diffs[k], cmap="RdBu_r", vmin=-lim, vmax=lim)
            if i == 0:
                top.set_ylabel("mean log power", fontsize=fontsize)
                bot.set_ylabel(f"minus {reference}", fontsize=fontsize)
        for row, im, label in ((2 * b, im_top, "log power"), (2 * b + 1, im_bot, "difference")):
            cb = fig.colorbar(im, cax=fig.add_subplot(gs[row, n_cols]))
            cb.set_label(label, fontsize=fontsize)
            cb.ax.tick_params(labelsize=fontsize)
    if title:
        fig.suptitle(title, fontsize=fontsize + 2)
    return fig


def jacobian_figure(jac: dict, n_steps: int, k: int, title: str | None = None):
    """||J_t||_2 per sampling step, one panel per model: {model: {class: array (n_steps, N)}}, mean +- sd over
    the N images; the shaded band marks the fine-tuned last `k` of `n_steps` steps."""
    fig, axes = plt.subplots(1, len(jac), figsize=(4.5 * len(jac), 3.2), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, (name, d) in zip(axes[0], jac.items()):
        for lab, J in d.items():
            J = np.asarray(J, dtype=float)
            mean, sd = J.mean(1), J.std(1)
            steps = np.arange(1, len(mean) + 1)
            ax.plot(steps, mean, label=lab)
            ax.fill_between(steps, mean - sd, mean + sd, alpha=0.2)
        ax.axvspan(n_steps - k + 0.5, n_steps + 0.5, color="grey", alpha=0.15, label=f"fine-tuned last {k}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("sampling step")
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("||J_t||_2")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def reconstruction_panel(x_uint8: np.ndarray, rec_uint8: np.ndarray, title: str | None = None, diff_gain: int = 4):
    """One image (H, W, 3) uint8, its reconstruction and |difference| x `diff_gain`, side by side."""
    a, r = np.asarray(x_uint8), np.asarray(rec_uint8)
    diff = np.clip(np.abs(a.astype(int) - r.astype(int)) * diff_gain, 0, 255).astype(np.uint8)
    fig, axes = plt.subplots(1, 3, figsize=(6.6, 2.6), layout="constrained")
    for ax, im, name in zip(axes, (a, r, diff), ("input", "reconstruction", f"|difference| x{diff_gain}")):
        ax.imshow(im, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _describe(row, index: int) -> str:
    """The label of one test row: real, or fake with its family and (if the table has a `role`) seen/held-out."""
    if not int(row["label"]):
        fam = str(row["family"])
        return f"real{'' if fam == 'real' else f' ({fam})'} | test row {index}"
    role = {"seen": "seen in training", "held_out": "held out"}.get(str(row.get("role", "") or ""), "")
    return f"fake | family {row['family']}{f' ({role})' if role else ''} | test row {index}"


def craft_explorer(model, x_test, test, with_settings=None, lam_default: float | None = None,
                   k_default: int | None = None, n_steps: int | None = None, lam_max: float = 8.0):
    """Interactive CRAFT reconstruction viewer: pick a family (incl. "real"), then one of its test images, and set
    the perturbation strength lambda and the fine-tuned segment length k. `x_test` (N, 3, H, W) in [-1, 1] lines up
    with the rows of `test` (columns family, label, optionally role); `with_settings(model, lam=, k=)` returns a
    view of `model` (default: `methods.craft.with_settings`). Renders once with the defaults when built, so a
    headless run (papermill) shows one figure and never waits for input."""
    import ipywidgets as widgets
    from IPython.display import display

    with_settings = with_settings or craft_with_settings
    cfg = getattr(model, "cfg", None)
    lam_default = float(cfg.lam if lam_default is None else lam_default)
    k_default = int(cfg.k if k_default is None else k_default)
    n_steps = int(cfg.n_steps if n_steps is None else n_steps)

    test = test.reset_index(drop=True)
    fams = [str(f) for f in dict.fromkeys(test["family"])]
    fams = (["real"] if "real" in fams else []) + sorted(f for f in fams if f != "real")
    rows_of = {f: np.flatnonzero((test["family"] == f).to_numpy()) for f in fams}

    def image_options(fam):
        idx = rows_of[fam]
        return [(f"{j + 1} of {len(idx)} (test row {i})", int(i)) for j, i in enumerate(idx)]

    family = widgets.Dropdown(options=[(f"{f} ({len(rows_of[f])})", f) for f in fams], value=fams[0],
                              description="family")
    image = widgets.Dropdown(options=image_options(fams[0]), description="image")

    def on_family(change):
        image.options = image_options(change["new"])   # resets `image` to the family's first image: one redraw

    family.observe(on_family, names="value")

    def show(image, lam, k):
        view = with_settings(model, lam=lam, k=k)
        x = x_test[image:image + 1]
        rec = view.reconstruct(x)
        d = float(view.distance(x, rec)[0])
        title = f"{_describe(test.iloc[image], image)} | lambda {lam:g}, k {k} | distance {d:.3f}"
        fig = reconstruction_panel(to_uint8(x)[0], to_uint8(rec)[0], title)
        display(fig)
        plt.close(fig)

    explorer = widgets.interactive(
        show, image=image,
        lam=widgets.FloatSlider(value=lam_default, min=0.0, max=max(lam_max, lam_default), step=0.5,
                                description="lambda", continuous_update=False),
        k=widgets.IntSlider(value=k_default, min=1, max=n_steps, description="k", continuous_update=False))
    explorer.children = (family, *explorer.children)
    explorer.family = family
    explorer.image = image
    return explorer


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


GDUF_CURVE = (("val_auc", "o-", "C0", "val: head"), ("train_auc", "o-", "C1", "train subset: head"),
              ("val_verdict_auc", "x--", "C0", "val: verdict log-odds"),
              ("train_verdict_auc", "x--", "C1", "train subset: verdict log-odds"))


def learning_curves(histories: dict, series=GDUF_CURVE, title: str | None = None):
    """Learning curves from step 0 (`train.ModelSelection` checks), one panel per model {name: history}: each of
    `series` (history key, style, colour, label) at every check, the step model selection kept, chance at 0.5; and
    below, the head's L_cls per class on validation (both should fall; one falling alone is a constant answer)."""
    fig, axes = plt.subplots(2, len(histories), figsize=(3.6 * len(histories), 5.2), squeeze=False,
                             constrained_layout=True)
    for (top, low), (name, hist) in zip(axes.T, histories.items()):
        checks = [h for h in hist if "val_auc" in h]
        top.set_title(name, fontsize=9)
        if not checks:
            top.text(0.5, 0.5, "no validation checks", ha="center", va="center", transform=top.transAxes)
            continue
        steps = [h["step"] for h in checks]
        for key, style, colour, label in series:
            if key in checks[0]:
                top.plot(steps, [h[key] for h in checks], style, color=colour, ms=3, lw=1, label=label)
        kept = checks[-1]["best_step"]
        kept = steps[-1] if kept is None else kept   # no check was a candidate: the weights training left
        top.axvline(kept, color="grey", ls="--", lw=1, label=f"kept: step {kept}")
        top.axhline(0.5, color="grey", lw=0.8, ls=":")
        top.set_ylim(0, 1), top.set_xlabel("step"), top.set_ylabel("AUC"), top.legend(fontsize=6)
        for key, label in (("val_L_cls_real", "val reals"), ("val_L_cls_fake", "val fakes")):
            if key in checks[0]:
                low.plot(steps, [h[key] for h in checks], "o-", ms=3, lw=1, label=label)
        low.set_xlabel("step"), low.set_ylabel("head L_cls (eq. 6)"), low.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
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


def craft_convergence(history: list[dict], title: str | None = None, smooth: int = 10):
    """CRAFT fine-tuning from step 0: the training loss (smoothed); at each check, the AUC of P(fake) beside the AUC
    of the distance d it is built on, on validation and on the fixed training subset, with the step model selection
    kept (`best_step`, 0 = the frozen pipeline); and the classes' mean d on validation (the mechanism: reals stay,
    fakes fall)."""
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(12, 2.9), constrained_layout=True)
    loss = np.array([h["craft_loss"] for h in history if "craft_loss" in h], dtype=float)
    w = max(1, min(smooth, len(loss) // 5 or 1))
    if len(loss):
        a.plot(np.arange(len(loss) - w + 1) + w, np.convolve(loss, np.ones(w) / w, "valid"))
    a.set_xlabel("step"), a.set_ylabel(f"training loss (mean of {w})")
    checks = [h for h in history if "val_auc" in h]
    if checks:
        steps = [h["step"] for h in checks]
        for key, style, label in (("val_auc", "o-", "val: P(fake)"), ("val_auc_d", "x--", "val: d"),
                                  ("train_auc", "o-", "train subset: P(fake)"), ("train_auc_d", "x--", "train subset: d")):
            if key in checks[0]:
                b.plot(steps, [h[key] for h in checks], style, label=label, ms=4, lw=1,
                       color="C0" if key.startswith("val") else "C1")
        b.axvline(checks[-1]["best_step"], color="grey", ls="--", label=f"kept: step {checks[-1]['best_step']}")
        b.axhline(0.5, color="grey", lw=0.8, ls=":")
        b.legend(fontsize=7)
        if "val_d_real" in checks[0]:
            c.plot(steps, [h["val_d_real"] for h in checks], "o-", ms=4, label="val reals")
            c.plot(steps, [h["val_d_fake"] for h in checks], "o-", ms=4, label="val fakes")
            c.set_yscale("log"), c.legend(fontsize=7)
    else:
        b.text(0.5, 0.5, "no validation checks\n(eval_every = 0)", ha="center", va="center", transform=b.transAxes)
    b.set_xlabel("step"), b.set_ylabel("AUC")
    c.set_xlabel("step"), c.set_ylabel("mean distance d")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def seed_bars(long, x: str, bars: str, value: str, ax, order=None, **bar_kw):
    """Bars of `value`'s mean over seeds for every (`x`, `bars`) pair of a long table (one row per seed), the seeds'
    standard deviation as error bars (0 with one seed): `x` categories along the axis (`order`, default as they first
    appear), one bar per `bars` category. Returns the (mean, std) frames that were drawn."""
    import pandas as pd

    g = long.groupby([x, bars], sort=False)[value]
    index, columns = list(order if order is not None else pd.unique(long[x])), list(pd.unique(long[bars]))
    mean = g.mean().unstack(bars).reindex(index=index, columns=columns)
    std = g.std(ddof=1).unstack(bars).reindex(index=index, columns=columns).fillna(0)
    mean.plot.bar(yerr=std, ax=ax, capsize=2, **bar_kw)
    ax.set_xlabel("")
    return mean, std
