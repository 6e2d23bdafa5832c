"""One evaluation protocol for every registered detector (`udet_core.methods.base`).

Every function takes detector names and seeds, fits (or loads the cached) detectors through the registry, and
returns tables in long form (one row per detector x seed x ...) plus 'mean ± std' summaries. Thresholds are
always the ones calibrated on validation data; the test split only ever gets scored.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score

from udet_core.core.errors import DataError
from udet_core.core.progress import tqdm
from udet_core.data import perturb
from udet_core.data.dataset import check_split
from udet_core.engine.metrics import (
    bootstrap_mean_interval,
    mean_std_table,
    per_family_table,
    summary,
)
from udet_core.methods.base import (
    cached_scores,
    score_dataset,
    scoring_cost,
)
from udet_core.study.craft import BASELINE, FULL_MODEL, PERTURBATION_ONLY, table2_name
from udet_core.world.weights import reload_detector

METRICS = ["bacc", "AP", "AUC", "TPR@5%FPR", "real_acc", "fake_acc"]


def summary_subsets(test: pd.DataFrame) -> dict[str, np.ndarray]:
    """The rows each summary line is computed on: all test images, reals + seen, reals + held-out families (the
    last two only when the manifest assigns roles, as udet-mini's does)."""
    every = {"all test": np.ones(len(test), bool)}
    if not set(test.role) & {"seen", "held_out"}:
        return every
    return {**every, "reals + seen families": (test.role != "held_out").to_numpy(),
            "reals + held-out families": (test.role != "seen").to_numpy()}


def focus_subset(long: pd.DataFrame) -> str:
    """The subset generalisation claims are read on: reals + held-out families where the manifest assigns roles,
    else all test images."""
    return "reals + held-out families" if "reals + held-out families" in set(long["subset"]) else "all test"


@dataclass
class Evaluation:
    """A study's tables: `summary` (mean ± std over seeds; for `cross_domain` the train x test domain matrix),
    `long` (one row per detector or variant x seed x subset or condition) and, where a study has them, the per-family
    tables."""
    summary: pd.DataFrame
    long: pd.DataFrame
    per_family: pd.DataFrame | None = None
    family_long: pd.DataFrame | None = None


@dataclass
class Cell:
    """One fitted detector of a study's grid: the detector, its seed, and optionally a variant's profile and the
    rows it is fitted and calibrated on (default: the workbench's train and val splits)."""
    detector: str
    seed: int
    variant: str | None = None
    p: object = None
    train_mask: np.ndarray | None = None
    val_mask: np.ndarray | None = None


def fitted_cells(wb, cells, desc: str, progress: bool | None = None):
    """The loop every study runs, written once: each cell's detector fitted in order (cached by content), with one
    progress bar; yields (cell, detector). `progress` is the fits' own (default: the workbench's)."""
    for cell in tqdm(list(cells), desc=desc, disable=not wb.progress):
        masks = {k: v for k, v in (("train_mask", cell.train_mask), ("val_mask", cell.val_mask)) if v is not None}
        yield cell, wb.fitted(cell.detector, p=cell.p, seed=cell.seed, progress=progress, **masks)


def subset_rows(s: np.ndarray, raw: np.ndarray | None, threshold: float, test: pd.DataFrame, **columns) -> list[dict]:
    """One row per summary subset (`summary_subsets`) of the test rows' scores `s`: the metrics at the validation
    `threshold` and the AUC of the raw signal `raw` (None: NaN), after `columns`."""
    y = test["label"].to_numpy()
    return [{**columns, "subset": subset, **summary(y[m], s[m], threshold), "AUC_raw": raw_auc(y[m], raw, m)}
            for subset, m in summary_subsets(test).items()]


def comparison(wb, detectors=None, seeds=None, cost_images: int = 128) -> Evaluation:
    """The comparison table (CRAFT Table 1/3 analogue) on the workbench's data set for every detector and seed.

    `fit_s` is the training time per seed (for CRAFT without building the frozen-prefix cache, which seeds share).
    Summary: mean ± std per detector and subset with cost columns; per family: mean ± std per detector and family;
    long: one row per detector x seed x subset; family_long: one row per detector x seed x family.
    """
    detectors, seeds = wb.applicable(detectors or wb.p.eval.detectors), seeds or wb.p.eval.seeds
    rows, fam_rows, fit_s, costs = [], [], [], []
    cells = [Cell(name, seed) for name in detectors for seed in seeds]
    for cell, det in fitted_cells(wb, cells, "comparison"):
        x_test, test = wb.for_detector(cell.detector).split("test")   # at the detector's input size
        fit_s.append(det.fit_s)
        s, raw = cached_scores(det, x_test, wb.progress), cached_scores(det, x_test, wb.progress, raw=True)
        rows += subset_rows(s, raw, det.threshold, test, detector=cell.detector, seed=cell.seed)
        fam = per_family_table(test, s, threshold=det.threshold)
        fam_rows.append(fam.assign(detector=cell.detector, seed=cell.seed))
        if cell.seed == seeds[-1]:   # the detector's last seed: its scoring cost, its mean fit time
            costs.append({"detector": cell.detector, "fit_s": float(np.mean(fit_s)),
                          **scoring_cost(det, x_test[:cost_images])})
            fit_s = []
    long = pd.DataFrame(rows)
    family_long = pd.concat(fam_rows, ignore_index=True)
    summ = mean_std_table(long, ["detector", "subset"], METRICS + ["AUC_raw"])
    cost = pd.DataFrame(costs).round({"fit_s": 1, "images_per_s": 1, "peak_rss_mb": 0, "scoring_extra_mb": 0})
    summ = summ.merge(cost, on="detector")
    fam_metrics = ["AP", "AUC", "TPR@5%FPR", "fake_acc", "real_acc"]
    per_family = mean_std_table(family_long, ["detector", "role", "family"], fam_metrics)
    return Evaluation(summ, long, per_family, family_long)


def raw_auc(y: np.ndarray, raw: np.ndarray | None, mask) -> float:
    """AUC of a detector's raw signal (`Detector.raw_signal`, e.g. CRAFT's d) on the rows `mask`; NaN without one."""
    from sklearn.metrics import roc_auc_score
    return float("nan") if raw is None else float(roc_auc_score(y, raw[mask]))


def paired_differences(long: pd.DataFrame, pairs, metrics=("AUC", "bacc"), subsets=None) -> pd.DataFrame:
    """Paired controls: for each (a, b) variant pair fitted from the same start with the same seeds (one change),
    the per-seed difference a - b of each metric on each subset, its mean, its standard deviation over seeds and
    whether the mean exceeds it (None for a single seed: no claim can be made), and the 95 % bootstrap interval of
    the mean over seeds with whether it excludes 0 (None below 3 seeds: `bootstrap_mean_interval`)."""
    rows = []
    for a, b in pairs:
        for subset in subsets or long["subset"].unique():
            t = long[long["subset"] == subset].set_index(["variant", "seed"])
            for metric in metrics:
                diff = (t.loc[a][metric] - t.loc[b][metric]).dropna()
                sd = float(diff.std(ddof=1)) if len(diff) > 1 else float("nan")
                lo, hi = bootstrap_mean_interval(diff.to_numpy())
                rows.append({"pair": f"{a} - {b}", "subset": subset, "metric": metric, "seeds": len(diff),
                             "per_seed": " ".join(f"{v:+.3f}" for v in diff), "mean_diff": float(diff.mean()),
                             "std_diff": sd, "beyond_seed_spread": _beyond(abs(float(diff.mean())), sd),
                             "boot_95_low": lo, "boot_95_high": hi,
                             "interval_excludes_0": None if np.isnan(lo) else bool(lo > 0 or hi < 0)})
    return pd.DataFrame(rows)


def ablation(wb, variants: dict, seeds, detector: str = "craft") -> Evaluation:
    """One detector under several profiles (`variants`: name -> Profile), each fitted per seed with the common
    protocol (the workbench's train split, validation threshold) and scored on its test split.

    Summary: mean ± std per variant and subset, with the mean fit time; long: variant x seed x subset."""
    x_test, test = wb.for_detector(detector).split("test")
    rows = []
    cells = [Cell(detector, seed, variant, p) for variant, p in variants.items() for seed in seeds]
    for cell, det in fitted_cells(wb, cells, f"{detector} variants", progress=False):
        rows += [{"variant": cell.variant, "seed": cell.seed, "subset": r["subset"], "fit_s": det.fit_s, **r,
                  "chosen_step": getattr(det, "chosen_step", None)}
                 for r in subset_rows(cached_scores(det, x_test), cached_scores(det, x_test, raw=True), det.threshold,
                                      test, variant=cell.variant, seed=cell.seed)]
    long = pd.DataFrame(rows)
    summ = mean_std_table(long, ["variant", "subset"], ["bacc", "AP", "AUC", "AUC_raw", "real_acc", "fake_acc"])
    fit = long.groupby(["variant", "subset"], sort=False)["fit_s"].mean().round(1).reset_index()
    return Evaluation(summ.merge(fit, on=["variant", "subset"]), long)


def seed_stats(long, metric: str, subset: str) -> tuple[pd.Series, pd.Series]:
    """Mean and standard deviation over seeds of `metric` per variant on `subset` (std NaN for a single seed: then
    no claim can say whether a gap exceeds the seeds' spread)."""
    g = long[long["subset"] == subset].groupby("variant", sort=False)[metric]
    return g.mean(), g.std(ddof=1)


def _ms(variant: str, mean: float, std: float) -> str:
    """'variant mean ± std' (the mean alone for a single seed)."""
    return f"{variant} {mean:.3f}" + ("" if np.isnan(std) else f" ± {std:.3f}")


def _beyond(gap: float, spread: float) -> bool | None:
    """Is `gap` larger than the seeds' `spread`? None when the spread is unknown (one seed)."""
    return None if np.isnan(spread) else bool(gap > spread)


def ordering_claim(long, claim: str, higher, lower, metric: str = "bacc", subset: str = "all test") -> dict:
    """Does every variant in `higher` beat every variant in `lower` on `metric` (mean over seeds)? Also says
    whether the smallest gap exceeds the sum of the two variants' seed standard deviations."""
    mean, std = seed_stats(long, metric, subset)
    pairs = [(h, lo) for h in higher for lo in lower]
    h, lo = min(pairs, key=lambda hl: mean[hl[0]] - mean[hl[1]])
    gap = mean[h] - mean[lo]
    return {"claim": claim, "metric": f"{metric} ({subset})",
            "ours": f"{_ms(h, mean[h], std[h])} vs {_ms(lo, mean[lo], std[lo])}",
            "agrees": None if np.isnan(gap) else bool(gap > 0),   # None: a mean is undefined (e.g. nothing parsed)
            "beyond_seed_spread": _beyond(gap, std[h] + std[lo])}


def chance_claim(long, claim: str, variant: str, metric: str = "bacc", subset: str = "all test",
                 tol: float = 0.1) -> dict:
    """Is `variant` within `tol` of chance (0.5) on `metric` (mean over seeds)?"""
    mean, std = seed_stats(long, metric, subset)
    m, sd = mean[variant], std[variant]
    return {"claim": claim, "metric": f"{metric} ({subset})", "ours": _ms(variant, m, sd),
            "agrees": bool(abs(m - 0.5) <= tol), "beyond_seed_spread": None if np.isnan(sd) else bool(abs(m - 0.5) + sd <= tol)}


def best_claim(long, claim: str, variant: str, metric: str = "bacc", subset: str = "all test") -> dict:
    """Is `variant` the best of the table on `metric` (mean over seeds)?"""
    return ordering_claim(long, claim, [variant], [v for v in long["variant"].unique() if v != variant], metric, subset)


def effect_claim(long, table: str, metric: str = "bacc", subset: str = "all test", min_gap: float = 0.01) -> dict:
    """Does `table` show a measurable effect: do two variants' means (over seeds) differ by more than the sum of
    their seed standard deviations, and by at least `min_gap`? Reports the pair whose gap exceeds its spread most."""
    mean, std = seed_stats(long, metric, subset)
    pairs = [(a, b) for a in mean.index for b in mean.index if a != b]
    if not pairs:
        return {"table": table, "metric": f"{metric} ({subset})", "variants": len(mean),
                "largest separation": "one variant only", "gap": 0.0, "seed_spread": 0.0, "measurable": False}
    sd = std.fillna(0.0)
    a, b = max(pairs, key=lambda ab: (mean[ab[0]] - mean[ab[1]] >= min_gap, mean[ab[0]] - mean[ab[1]] - sd[ab[0]] - sd[ab[1]]))
    gap, spread = mean[a] - mean[b], std[a] + std[b]
    beyond = _beyond(gap, spread)
    return {"table": table, "metric": f"{metric} ({subset})", "variants": len(mean),
            "largest separation": f"{_ms(a, mean[a], std[a])} vs {_ms(b, mean[b], std[b])}",
            "gap": round(float(gap), 4), "seed_spread": round(float(spread), 4),
            "measurable": None if beyond is None else bool(beyond and gap >= min_gap)}


def craft_paper_claims(tables: dict, variants: dict, k: int) -> pd.DataFrame:
    """CRAFT's ablation claims (Tables 2, 5, 6) checked on the ablation groups that ran (`tables`: group -> long
    per-seed table; `variants`: group -> {name: config}; `k`: the profile's fine-tuned steps)."""
    full, cr, l1, l2 = FULL_MODEL, table2_name("cr", False), table2_name("l1", False), table2_name("l2", False)
    rows, focus = [], focus_subset(next(iter(tables.values())))
    checks = [("bacc", "all test"), ("AUC", "all test")] + ([("bacc", focus)] if focus != "all test" else [])
    for metric, subset in checks:
        kw = dict(metric=metric, subset=subset)
        if "table2" in tables:
            t2 = tables["table2"]
            rows += [
                chance_claim(t2, "T2: without fine-tuning, detection is near chance", BASELINE, **kw),
                ordering_claim(t2, "T2: perturbation alone beats the baseline", [PERTURBATION_ONLY], [BASELINE], **kw),
                ordering_claim(t2, "T2: fine-tune only, CR beats L1", [cr], [l1], **kw),
                ordering_claim(t2, "T2: fine-tune only, L1 beats L2", [l1], [l2], **kw),
                ordering_claim(t2, "T2: adding perturbation to CR fine-tuning helps", [full], [cr], **kw),
                best_claim(t2, "T2: fine-tune & perturbation is the best setting", full, **kw)]
        if "table5" in tables:
            t5 = tables["table5"]
            rows += [
                ordering_claim(t5, "T5: the encoder alone beats the UNet alone and the decoder alone", ["encoder"], ["UNet", "decoder"], **kw),
                ordering_claim(t5, "T5: every setting with the encoder beats UNet + decoder",
                               [v for v in variants["table5"] if "encoder" in v], ["UNet + decoder"], **kw),
                best_claim(t5, "T5: fine-tuning all three modules is best", "encoder + UNet + decoder", **kw)]
        if "table6" in tables:
            k_mid = [v for v, c in variants["table6"].items() if c.k == k][0]
            rows.append(best_claim(tables["table6"], f"T6: detection peaks at moderate k (paper 15 of 50; here {k_mid})",
                                   k_mid, **kw))
    return pd.DataFrame(rows)


def cross_domain(wb, detectors=None, seeds=None) -> Evaluation:
    """CRAFT Table 1 analogue: fit on one content domain (train + val rows of that domain), test on each.

    Only images with a content domain (`wb.df.content`) take part: on udet-mini, reals and the families made from
    real crops (their `source` names a photo; unconditional samples have none); elsewhere the manifest's `domain`
    (e.g. DiffusionForensics' imagenet / lsun_bedroom). Summary: the matrix of 'bacc mean ± std' with rows detector x
    train domain and one column per test domain; both tables empty with fewer than two domains.
    """
    p, df = wb.p, wb.df
    detectors, seeds = wb.applicable(detectors or p.eval.cross_domain_detectors), seeds or p.eval.seeds
    has = df["content"].notna().to_numpy()
    domains = sorted(df.loc[has, "content"].unique())
    if len(domains) < 2:
        return Evaluation(pd.DataFrame(columns=["detector", "train_domain"]), pd.DataFrame())
    rows = []
    in_dom = {d: has & (df["content"] == d).to_numpy() for d in domains}
    cells = [Cell(name, seed, train_dom, None, in_dom[train_dom] & (df["split"] == "train").to_numpy(),
                  in_dom[train_dom] & (df["split"] == "val").to_numpy())
             for name in detectors for train_dom in domains for seed in seeds]
    for cell, det in fitted_cells(wb, cells, "cross-domain"):
        name, train_dom, seed = cell.detector, cell.variant, cell.seed
        images = wb.for_detector(name).images   # the same rows at the detector's input size
        for test_dom in domains:
            m = has & (df["split"] == "test").to_numpy() & (df["content"] == test_dom).to_numpy()
            y = df["label"].to_numpy()[m]
            rows.append({"detector": name, "train_domain": train_dom, "test_domain": test_dom, "seed": seed,
                         **summary(y, cached_scores(det, images[m]), det.threshold)})
    long = pd.DataFrame(rows)
    cell_table = mean_std_table(long, ["detector", "train_domain", "test_domain"], ["bacc", "AP"])
    matrix = cell_table.pivot(index=["detector", "train_domain"], columns="test_domain", values="bacc")
    matrix.columns = [f"bacc on {c}" for c in matrix.columns]
    return Evaluation(matrix.reset_index(), long)


def robustness_conditions(p) -> list[dict]:
    """JPEG quality x centre-crop ratio (UniGenDet appendix Tables B/C), then Gaussian blur alone."""
    e = p.eval
    conds = [{"jpeg_quality": q, "crop_ratio": r, "blur_sigma": 0.0} for q in e.jpeg_qualities for r in e.crop_ratios]
    return conds + [{"jpeg_quality": None, "crop_ratio": 1.0, "blur_sigma": s} for s in e.blur_sigmas]


def balanced_test_sample(df, n_per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of `n_per_class` test reals and `n_per_class` test fakes (all families), fixed by `seed`."""
    rng = np.random.default_rng(seed)
    out = []
    for label in (0, 1):
        idx = np.flatnonzero(((df["split"] == "test") & (df["label"] == label)).to_numpy())
        out.append(np.sort(rng.choice(idx, min(n_per_class, len(idx)), replace=False)))
    return np.concatenate(out)


def robustness(wb, detectors=None, seeds=None) -> Evaluation:
    """Scores of both classes under each post-processing condition, at the clean validation threshold.

    Summary: mean ± std of bacc and AP per detector and condition."""
    p, df = wb.p, wb.df
    detectors, seeds = wb.applicable(detectors or p.eval.detectors), seeds or p.eval.seeds
    idx = balanced_test_sample(df, p.eval.robustness_per_class)
    y = df["label"].to_numpy()[idx]
    conds = robustness_conditions(p)
    perturbed = {}   # input size -> the sample under each condition (one size on udet-mini; per detector elsewhere)
    rows = []
    for cell, det in fitted_cells(wb, [Cell(n, seed) for n in detectors for seed in seeds], "robustness"):
        name, seed = cell.detector, cell.seed
        view = wb.for_detector(name)
        size = view.p.data.resolution
        if size not in perturbed:
            perturbed[size] = [np.stack([perturb.apply(a, **c) for a in view.images[idx]]) for c in conds]
        for c, x in zip(conds, perturbed[size]):
            s = cached_scores(det, x)
            rows.append({"detector": name, "seed": seed, "jpeg_quality": c["jpeg_quality"] or "none",
                         "crop_ratio": c["crop_ratio"], "blur_sigma": c["blur_sigma"],
                         **summary(y, s, det.threshold)})
    long = pd.DataFrame(rows)
    summ = mean_std_table(long, ["detector", "jpeg_quality", "crop_ratio", "blur_sigma"], ["bacc", "AP"])
    return Evaluation(summ, long)


def format_bias(wb, detectors=None, seeds=None) -> Evaluation:
    """Score every test image as stored (PNG) and after a JPEG round trip at `p.eval.format_jpeg_quality`:
    how many decisions flip, per class, and how far the mean score moves in units of the PNG scores' standard
    deviation (DIRE's JPEG/PNG confound).

    Summary: mean ± std per detector."""
    p, df = wb.p, wb.df
    detectors, seeds = wb.applicable(detectors or p.eval.detectors), seeds or p.eval.seeds
    m = (df["split"] == "test").to_numpy()
    y, q = df["label"].to_numpy()[m], p.eval.format_jpeg_quality
    inputs = {}   # input size -> (PNG, JPEG round trip) of the test images at that size
    rows = []
    for cell, det in fitted_cells(wb, [Cell(n, seed) for n in detectors for seed in seeds], "format bias"):
        name, seed = cell.detector, cell.seed
        view = wb.for_detector(name)
        size = view.p.data.resolution
        if size not in inputs:
            inputs[size] = view.images[m], np.stack([perturb.jpeg(a, q) for a in view.images[m]])
        x_png, x_jpg = inputs[size]
        s_png, s_jpg = cached_scores(det, x_png), cached_scores(det, x_jpg)
        d_png, d_jpg = s_png >= det.threshold, s_jpg >= det.threshold
        flip = d_png != d_jpg
        rows.append({"detector": name, "seed": seed, "flipped_all": flip.mean(), "flipped_real": flip[y == 0].mean(),
                     "flipped_fake": flip[y == 1].mean(),
                     "real_called_fake_png": d_png[y == 0].mean(), "real_called_fake_jpeg": d_jpg[y == 0].mean(),
                     "fake_called_fake_png": d_png[y == 1].mean(), "fake_called_fake_jpeg": d_jpg[y == 1].mean(),
                     "bacc_png": balanced_accuracy_score(y, d_png), "bacc_jpeg": balanced_accuracy_score(y, d_jpg),
                     "score_shift_in_sd": float((s_jpg - s_png).mean() / max(s_png.std(), 1e-12))})
    long = pd.DataFrame(rows)
    metrics = [c for c in long.columns if c not in ("detector", "seed")]
    return Evaluation(mean_std_table(long, ["detector"], metrics), long)


@dataclass
class CheckpointEvaluation:
    """What `evaluate_checkpoints` measures: one row per detector x summary subset (`comparison`), per detector x fake
    family (`per_family`), per detector x test image (`scores`, NaN = bad file), and per detector its checkpoint, data
    provenance, images/s and bad files (`runs`)."""
    comparison: pd.DataFrame
    per_family: pd.DataFrame
    scores: pd.DataFrame
    runs: list[dict]


def evaluate_checkpoints(checkpoints, dataset_for, *, batch_size: int = 64, num_workers: int = 0,
                         progress: bool = False) -> CheckpointEvaluation:
    """Already-trained checkpoints (`methods.base.load_detector`) on the `test` split of a lazy data set, streamed:
    `dataset_for(detector)` gives the `ImageDataset` at that detector's input size. Each detector keeps the threshold
    calibrated on validation data when it was trained."""
    import time

    rows, fams, scores, runs = [], [], [], []
    for folder in checkpoints:
        det = reload_detector(folder).uncached()   # no per-image caches on data of unknown size
        ds = dataset_for(det).subset("test")
        test = check_split(ds.manifest, "test", ds.description.get("spec", "data set"))
        t0 = time.perf_counter()
        s, problems = score_dataset(det, ds, batch_size=batch_size, num_workers=num_workers, progress=progress)
        wall = time.perf_counter() - t0
        ok = ~np.isnan(s)
        kept, y = test[ok].reset_index(drop=True), test["label"].to_numpy()[ok]
        n_real, n_fake = int((y == 0).sum()), int((y == 1).sum())
        if not n_real or not n_fake:
            raise DataError(ds.description.get("spec", "data set"), f"after skipping {len(problems)} unreadable "
                            f"file(s) (e.g. {problems[0][0] if problems else 'none'}), the test split has {n_real} "
                            f"real and {n_fake} fake images left; scoring needs both")
        roles = set(kept["role"]) & {"seen", "held_out"}
        subsets = summary_subsets(kept) if roles else {"all test": np.ones(len(kept), bool)}
        for subset, m in subsets.items():
            rows.append({"detector": det.name, "checkpoint": str(folder), "subset": subset,
                         **summary(y[m], s[ok][m], det.threshold)})
        fams.append(per_family_table(kept, s[ok], threshold=det.threshold).assign(detector=det.name,
                                                                                checkpoint=str(folder)))
        scores.append(pd.DataFrame({"detector": det.name, "checkpoint": str(folder), "path": test["path"],
                                    "label": test["label"], "family": test["family"], "score": s}))
        runs.append({"detector": det.name, "checkpoint": str(folder), "threshold": det.threshold,
                     "data": ds.provenance(), "n_scored": int(ok.sum()), "wall_s": round(wall, 2),
                     "images_per_s": round(len(ds) / max(wall, 1e-9), 2),
                     "bad_files": [{"path": p, "problem": why} for p, why in problems]})
    return CheckpointEvaluation(pd.DataFrame(rows), pd.concat(fams, ignore_index=True),
                                pd.concat(scores, ignore_index=True), runs)
