"""`python -m udet_core bench ...`: performance measurements (never run as timed tests)."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from udet_core.core.provenance import PeakRSS
from udet_core.data.dataset import ArrayDataset, ImageDataset
from udet_core.engine.distances import distance_label
from udet_core.engine.metrics import summary
from udet_core.methods import craft
from udet_core.methods.base import score_dataset
from udet_core.methods.craft import FAST_MODE, Craft, split_tensors


def _timeit(fn, repeat: int = 2) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def craft_cache(wb, n_steps: int = 50, k: int = 15, n_images: int = 256, batch_size: int = 16,
                seed: int = 0, modules=("encoder", "unet", "decoder")) -> dict:
    """Per-epoch cost of CRAFT fine-tuning with and without the frozen-prefix cache.

    One training step = forward + backward + update on one batch; an epoch = n_images / batch_size steps.
    Uncached steps also run inversion + the first n-k sampling steps (frozen, no grad) for their batch; the
    cached run pays that once per image when the cache is built, not in every epoch. The speedup is printed beside
    its bound 1 + T_prefix / T_suffix (both timed in this run: the frozen prefix of one batch, one cached step).
    """
    cfg = replace(wb.p.craft, n_steps=n_steps, k=k, batch_size=batch_size,
                  **{f"train_{m}": m in modules for m in ("encoder", "unet", "decoder")})
    x, y = split_tensors(wb.images, wb.df, "train")
    torch.manual_seed(seed)
    model = Craft.from_backbone(_backbone(wb), cfg)
    model.fit_center(x[y == 0][:128])
    xb, yb = x[:batch_size], y[:batch_size]
    mods = model.trainable()
    opt = torch.optim.AdamW(model.param_groups())

    def step(z):
        opt.zero_grad()
        model.loss(mods, xb, z if z is not None else model.prefix(xb), yb).backward()
        opt.step()

    z = model.prefix(xb)
    t_cached = _timeit(lambda: step(z))
    t_uncached = _timeit(lambda: step(None))
    t_prefix = _timeit(lambda: model.prefix(xb))
    steps_per_epoch = n_images / batch_size
    t_build = t_prefix * steps_per_epoch
    return {"n_steps": n_steps, "k": k, "batch_size": batch_size, "n_images": n_images,
            "step_cached_s": round(t_cached, 3), "step_uncached_s": round(t_uncached, 3),
            "prefix_per_batch_s": round(t_prefix, 3),
            "epoch_cached_s": round(t_cached * steps_per_epoch, 1),
            "epoch_uncached_s": round(t_uncached * steps_per_epoch, 1),
            "cache_build_once_s": round(t_build, 1),
            "speedup_per_epoch": round(t_uncached / t_cached, 2),
            # the most the cache can give: an uncached step is at best a cached step plus the prefix of its batch
            "speedup_bound_1_plus_T_prefix_over_T_suffix": round(1 + t_prefix / t_cached, 2),
            "trained_modules": [m for m in ("encoder", "unet", "decoder") if getattr(cfg, f"train_{m}")]}


def craft_detect(checkpoint, wb, split: str = "test", batch_size: int = 64) -> list[dict]:
    """Detection throughput and accuracy of a CRAFT checkpoint on a workbench's split, full mode vs CRAFT-fast
    (k inversion steps; a different detector, see `craft.FAST_MODE`)."""
    model = Craft.load(checkpoint)
    x, y = split_tensors(wb.images, wb.df, split)
    rows = []
    for fast in (False, True):
        t0 = time.perf_counter()
        s = model.score(x, fast=fast, batch_size=batch_size).p_fake
        wall = time.perf_counter() - t0
        thr = model.threshold_fast if fast else model.threshold
        rows.append({"mode": FAST_MODE if fast else "CRAFT (full: n inversion steps)", "unet_evals_per_image":
                     2 * model.cfg.k if fast else 2 * model.cfg.n_steps, "images_per_s": round(len(x) / wall, 1),
                     **{k: round(v, 4) for k, v in summary(y.numpy(), s, thr).items()}})
    return rows


def craft_distance(wb, names=("mse", "lpips-vgg", "vae-features"), steps: int = 120, seed: int = 0) -> list[dict]:
    """How the choice of d(x, x_hat) affects CRAFT: train one short model per distance, report validation AUC
    and training time. (How the offline default distance was chosen; ImageNet LPIPS weights are not available.)"""
    from sklearn.metrics import roc_auc_score

    train = (wb.df["split"] == "train").to_numpy()
    xv, yv = split_tensors(wb.images, wb.df, "val")
    rows = []
    for name in names:
        torch.manual_seed(seed)
        model = Craft.from_backbone(_backbone(wb), replace(wb.p.craft, distance=name, steps=steps))
        t0 = time.perf_counter()
        hist = craft.fit(model, ArrayDataset(wb.images[train], wb.df[train]), seed=seed, progress=True).history
        wall = time.perf_counter() - t0
        scores = model.eval().score(xv)
        s, d = scores.p_fake, scores.distance
        yn = yv.numpy()
        rows.append({"distance": distance_label(model.distance), "train_s": round(wall, 1), "steps": steps,
                     "val_AUC": round(roc_auc_score(yn, s), 3), "val_AUC_of_raw_distance": round(roc_auc_score(yn, d), 3),
                     "median_d_real": float(np.median(d[yn == 0])), "median_d_fake": float(np.median(d[yn == 1])),
                     "final_loss": round(float(np.mean([h["craft_loss"] for h in hist if "craft_loss" in h][-10:])), 3)})
    return rows


def _backbone(wb):
    """The workbench's CRAFT backbone: the one it names, else the profile's stand-in."""
    return wb.backbone_folder()


# ------------------------------------------------------------------ own data at scale (`bench make-tree`)


def streaming(det, ds, n: int = 1000, batch_size: int = 64, workers: int = 2) -> list[dict]:
    """Images/s of scoring `n` random rows of the lazy data set `ds` with detector `det`: in memory (decode all
    rows into one array, then score it; the notebooks' path) against streamed through a DataLoader with `workers`
    decoding processes (`methods.base.score_dataset`), and the peak resident memory of each (this process, MiB)."""
    det = det.uncached()
    sample = ds.manifest.sample(min(n, len(ds)), random_state=0)   # both classes, every family
    sub = ImageDataset(sample, ds.size, ds.policy, ds.multiple, ds.convert, ds.description)
    rows = []
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        images, _, _ = sub.load(batch_size=batch_size)
        t_load = time.perf_counter() - t0
        s_mem = np.asarray(det.score(images), dtype=float)
        wall = time.perf_counter() - t0
    rows.append({"path": "in memory (decode all, then score)", "images": len(images), "wall_s": round(wall, 2),
                 "decode_s": round(t_load, 2), "images_per_s": round(len(images) / wall, 1),
                 "peak_rss_mb": round(mem.peak_mb)})
    del images
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        s_stream, _ = score_dataset(det, sub, batch_size=batch_size, num_workers=workers)
        wall = time.perf_counter() - t0
    ok = ~np.isnan(s_stream)
    rows.append({"path": f"streamed ({workers} workers)", "images": int(ok.sum()), "wall_s": round(wall, 2),
                 "decode_s": None, "images_per_s": round(ok.sum() / wall, 1), "peak_rss_mb": round(mem.peak_mb),
                 "max_abs_score_diff": float(np.abs(s_stream[ok] - s_mem).max())})
    return rows
