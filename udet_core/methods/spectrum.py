"""A deliberately simple baseline: logistic regression on log power spectra (cf. Durall et al. 2020,
Frank et al. 2020). Used to check that udet-mini is neither trivial nor impossible."""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from udet_core.data.properties import log_spectrum


def spectral_features(images: np.ndarray) -> np.ndarray:
    """Flattened centred log power spectrum of each image's luminance."""
    return log_spectrum(images).reshape(len(images), -1)


def fit_spectral_logreg(X_train, y_train, X_val, y_val, Cs=(0.001, 0.01, 0.1, 1.0), seed: int = 0):
    """Fit one model per C on train, keep the one with the best validation AP (never the test split)."""
    best, best_ap = None, -1.0
    for C in Cs:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000, random_state=seed))
        model.fit(X_train, y_train)
        ap = average_precision_score(y_val, model.predict_proba(X_val)[:, 1])
        if ap > best_ap:
            best, best_ap = model, ap
    return best, {"C": best[-1].C, "val_AP": best_ap}


def evaluate(df, images: np.ndarray, seed: int = 0):
    """Train on the train split (reals + seen families), pick C on val, score everything.

    Returns (scores for every row of `df`, info dict). Use `metrics.per_family_table` for the test table.
    """
    X = spectral_features(images)
    y = df["label"].to_numpy()
    tr, va = (df["split"] == "train").to_numpy(), (df["split"] == "val").to_numpy()
    model, info = fit_spectral_logreg(X[tr], y[tr], X[va], y[va], seed=seed)
    return model.predict_proba(X)[:, 1], info
