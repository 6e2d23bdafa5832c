"""Detection metrics (scikit-learn underneath). Scores: higher = more likely fake; labels: 1 = fake."""
from __future__ import annotations

import functools
import math
import re

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from udet_core.data.images import to_tensor


def tpr_at_fpr(labels, scores, fpr: float = 0.05) -> float:
    """True-positive rate at the largest threshold whose false-positive rate is <= `fpr`."""
    f, t, _ = roc_curve(labels, scores)
    return float(t[f <= fpr].max())


def per_family_table(df: pd.DataFrame, scores, split: str = "test", threshold: float | None = None) -> pd.DataFrame:
    """AP / AUC / TPR@5%FPR of the split's reals against each fake family of that split, one row per family
    (with `threshold`: also the share of the family's fakes detected, and the reals' accuracy)."""
    df = df.assign(score=np.asarray(scores, dtype=float))
    d = df[df["split"] == split]
    reals = d[d["label"] == 0]
    rows = []
    for (family, role), fakes in d[d["label"] == 1].groupby(["family", "role"]):
        y = np.r_[np.zeros(len(reals)), np.ones(len(fakes))]
        s = np.r_[reals["score"], fakes["score"]]
        row = {"family": family, "role": role, "n_real": len(reals), "n_fake": len(fakes),
               "AP": average_precision_score(y, s), "AUC": roc_auc_score(y, s), "TPR@5%FPR": tpr_at_fpr(y, s)}
        if threshold is not None:
            row["fake_acc"] = float((fakes["score"] >= threshold).mean())
            row["real_acc"] = float((reals["score"] < threshold).mean())
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["role", "family"], ascending=[False, True]).reset_index(drop=True)


def summary(labels, scores, threshold: float) -> dict:
    """Balanced accuracy (the mean of the real and the fake accuracy, so chance is 0.5 on any class mix) and the
    per-class accuracies at `threshold`, plus threshold-free AP, AUC and TPR at 5 % FPR."""
    y, s = np.asarray(labels), np.asarray(scores, dtype=float)
    pred = s >= threshold
    real_acc, fake_acc = float((~pred[y == 0]).mean()), float(pred[y == 1].mean())
    return {"n": len(y), "n_real": int((y == 0).sum()), "bacc": 0.5 * (real_acc + fake_acc), "real_acc": real_acc,
            "fake_acc": fake_acc, "AP": float(average_precision_score(y, s)), "AUC": float(roc_auc_score(y, s)),
            "TPR@5%FPR": tpr_at_fpr(y, s)}


def calibrate_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold on the score that maximises balanced accuracy on (validation) scores."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("threshold calibration needs real and fake validation images")
    cands = np.unique(scores)
    cands = np.r_[cands, cands[-1] + 1e-6]
    best, best_t = -1.0, float(cands[0])
    for t in cands:
        pred = scores >= t
        bacc = 0.5 * (pred[labels == 1].mean() + (~pred[labels == 0]).mean())
        if bacc > best:
            best, best_t = bacc, float(t)
    return best_t


def mean_std_table(long: pd.DataFrame, by: list[str], metrics: list[str], digits: int = 3) -> pd.DataFrame:
    """One row per `by` group: each metric as 'mean ± std' over the group's rows (seeds), and the seed count (a
    single seed has no spread: its mean alone)."""
    g = long.groupby(by, sort=False)[metrics]
    mean, std = g.mean(), g.std(ddof=1)
    out = pd.DataFrame(index=mean.index)
    for c in metrics:
        out[c] = [f"{m:.{digits}f}" if np.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in zip(mean[c], std[c])]
    out["seeds"] = g.size()
    return out.reset_index()


def parse_verdict(text: str) -> int | None:
    """The real/fake verdict of an answer (1 = fake, 0 = real): its first word, as every reference explanation starts
    with it; None (unparsed, counted) when the first word is neither. No search for the words further on: every
    template explanation contains 'real' ("typical real crops"), so that fallback called broken answers real."""
    first = re.match(r"\W*(real|fake)\b", str(text).lower())
    return int(first.group(1) == "fake") if first else None


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer
    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(reference: str, prediction: str) -> float:
    """ROUGE-L F-measure (the `rouge-score` package, Lin 2004) of one prediction against its reference."""
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def css(reference: str, prediction: str) -> float:
    """CSS as the official UniGenDet evaluation computes it: cosine similarity of TF-IDF vectors fitted on the
    (reference, prediction) pair alone."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity
    try:
        v = TfidfVectorizer().fit_transform([reference, prediction])
    except ValueError:   # empty vocabulary: a prediction without words
        return 0.0
    return float(cosine_similarity(v[0], v[1])[0, 0])


def explanation_metrics(labels, references, predictions) -> dict:
    """bAcc (balanced accuracy) / F1 of the verdicts parsed from the answers (1 = fake is the positive class),
    ROUGE-L and CSS of the answers against the reference explanations, on the answers whose verdict parses (as the
    official evaluation; `unparsed` counts the others). The paper reports plain accuracy on balanced sets."""
    from sklearn.metrics import balanced_accuracy_score, f1_score
    verdicts = [parse_verdict(p) for p in predictions]
    ok = [i for i, v in enumerate(verdicts) if v is not None]
    y, v = np.asarray(labels)[ok], np.asarray([verdicts[i] for i in ok])
    return {"n": len(labels), "unparsed": len(labels) - len(ok),
            "bAcc": float(balanced_accuracy_score(y, v)) if ok else float("nan"),
            "F1": float(f1_score(y, v, zero_division=0)) if ok else float("nan"),
            "ROUGE-L": float(np.mean([rouge_l(references[i], predictions[i]) for i in ok])) if ok else float("nan"),
            "CSS": float(np.mean([css(references[i], predictions[i]) for i in ok])) if ok else float("nan")}


# ------------------------------------------------------------------ generation metrics (UniGenDet Table 4, D)

def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The FID formula (Heusel et al. 2017) on two feature sets (N, D): ||mu_a - mu_b||^2 +
    Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). 'FID' proper only with Inception features; tables name the features and the
    sample count (the estimate is biased by N: numbers compare only at equal counts). Needs N > D on both sides, or
    the covariances are rank-deficient."""
    from scipy import linalg
    if min(len(a), len(b)) <= a.shape[1]:
        raise ValueError(f"frechet_distance: {min(len(a), len(b))} samples for {a.shape[1]}-d features leave the "
                         f"covariances rank-deficient; use more samples or fewer feature dimensions")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean.real))


def intra_prompt_diversity(groups, distance) -> float:
    """UniGenDet Table D: the mean pairwise perceptual distance among the samples of each prompt (uint8 arrays),
    averaged over prompts. `distance(x, y)` maps two [-1, 1] image batches to per-pair distances."""
    import torch

    per_prompt = []
    for g in groups:
        x = to_tensor(g)
        i, j = torch.triu_indices(len(x), len(x), offset=1)
        with torch.no_grad():
            per_prompt.append(float(distance(x[i], x[j]).mean()))
    return float(np.mean(per_prompt))


def judged_real_share(scores, threshold: float) -> float:
    """Detector-judged realism: the share of generated images a frozen detector scores as real (below threshold)."""
    return float((np.asarray(scores, dtype=float) < threshold).mean())


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k / n (95 % at z = 1.96; Wilson 1927): never outside [0, 1],
    sensible at k = 0 or n."""
    if n == 0:
        return float("nan"), float("nan")
    p, z2 = k / n, z * z
    centre, half = (p + z2 / (2 * n)) / (1 + z2 / n), z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean_interval(x, n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `x` (Efron 1979): `n_boot` resamples with replacement, the
    (1 - level) / 2 and (1 + level) / 2 quantiles of their means; NaN for fewer than 3 values (resamples of 2 only
    span their range: no interval)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 3:
        return float("nan"), float("nan")
    means = x[np.random.default_rng(seed).integers(0, len(x), (n_boot, len(x)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def psnr(x, y):
    """Per-image PSNR (dB) of images in [-1, 1] (peak-to-peak 2): 10 log10(4 / MSE)."""
    import torch
    mse = ((x.clamp(-1, 1) - y.clamp(-1, 1)) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))
