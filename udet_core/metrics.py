"""Detection metrics (scikit-learn underneath). Scores: higher = more likely fake; labels: 1 = fake."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def tpr_at_fpr(labels, scores, fpr: float = 0.05) -> float:
    """True-positive rate at the largest threshold whose false-positive rate is <= `fpr`."""
    f, t, _ = roc_curve(labels, scores)
    return float(t[f <= fpr].max())


def per_family_table(df: pd.DataFrame, scores, split: str = "test") -> pd.DataFrame:
    """AP / AUC / TPR@5%FPR of the split's reals against each fake family of that split, one row per family."""
    df = df.assign(score=np.asarray(scores, dtype=float))
    d = df[df["split"] == split]
    reals = d[d["label"] == 0]
    rows = []
    for (family, role), fakes in d[d["label"] == 1].groupby(["family", "role"]):
        y = np.r_[np.zeros(len(reals)), np.ones(len(fakes))]
        s = np.r_[reals["score"], fakes["score"]]
        rows.append({"family": family, "role": role, "n_real": len(reals), "n_fake": len(fakes),
                     "AP": average_precision_score(y, s), "AUC": roc_auc_score(y, s), "TPR@5%FPR": tpr_at_fpr(y, s)})
    return pd.DataFrame(rows).sort_values(["role", "family"], ascending=[False, True]).reset_index(drop=True)
