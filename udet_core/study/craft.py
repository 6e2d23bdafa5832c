"""CRAFT's studies on a workbench: its premise before fine-tuning (latent centre distance, frozen reconstruction
distance), the choice of backbone and distance on validation, backbone fidelity, and the ablation design of
Tables 2, 5 and 6."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from udet_core.core.profiles import CraftConfig
from udet_core.core.progress import tqdm
from udet_core.data.images import to_tensor
from udet_core.engine.distances import distance_label, make_distance
from udet_core.engine.metrics import per_family_table, psnr
from udet_core.methods.craft import (
    Craft,
    cache_dir,
    latent_center_distance,
    prefix_cache,
    split_tensors,
)
from udet_core.models.backbones import ImageVariation
from udet_core.models.sampling import ddim_roundtrip, vae_roundtrip
from udet_core.world.weights import candidate_backbones

DISTANCE_CANDIDATES = ("mse", "lpips-vgg")   # d(x, x_hat) candidates chosen between on the validation split


def premise_check(wb, backbone=None, split: str = "test", distances=None):
    """CRAFT's premise on the workbench's data set, before any fine-tuning: for the split's reals against each of its
    families (and all fakes), the mean and AUC of ||z_T - mu_real|| (§3.2) and of the frozen pipeline's distance
    d(x, x_hat) after the perturbation (Table 2's 'perturbation only' row), for each distance in `distances`
    (default: the profile's). Long table, one row per score x distance x family. `backbone`: an SD Image Variation
    folder (default: the workbench's detector backbone)."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    wb = wb.for_detector("craft")   # CRAFT's input size on data other than udet-mini
    p, run_dir, images, df = wb.p, wb.run_dir, wb.images, wb.df
    cfg = replace(p.craft, perturb=True, train_encoder=False, train_unet=False, train_decoder=False)
    model = Craft.from_backbone(backbone or wb.backbone_folder(), cfg)
    x_train, y_train = split_tensors(images, df, "train")
    model.fit_center(x_train[y_train == 0], cfg.eval_batch_size, cache_dir=cache_dir(run_dir))
    x, y = split_tensors(images, df, split)
    y = y.numpy()
    test = df[(df["split"] == split).to_numpy()].reset_index(drop=True)
    z = prefix_cache(model, x, cfg.eval_batch_size, cache_dir=cache_dir(run_dir))
    scores = {("||z_T - mu_real||", None): latent_center_distance(model, x, cfg.eval_batch_size)}
    for name in distances or (cfg.distance,):
        model.distance = make_distance(name, model.base.vae)
        scores["d (frozen, perturbed)", distance_label(model.distance)] = \
            model.score(x, batch_size=cfg.eval_batch_size, z=z).distance
    rows = []
    for (name, dist), s in scores.items():
        fam = per_family_table(test, s, split=split)
        fam["mean_fake"] = fam["family"].map(pd.Series(s).groupby(test["family"]).mean())
        every = {"family": "all fakes", "role": "all", "n_real": int((y == 0).sum()), "n_fake": int(y.sum()),
                 "AUC": roc_auc_score(y, s), "mean_fake": s[y == 1].mean()}
        rows.append(pd.concat([fam, pd.DataFrame([every])], ignore_index=True)
                    .assign(score=name, distance=dist, mean_real=s[y == 0].mean()))
    cols = ["score", "distance", "family", "role", "n_real", "n_fake", "mean_real", "mean_fake", "AUC"]
    return pd.concat(rows, ignore_index=True)[cols]


def premise_by_backbone(wb, distances=DISTANCE_CANDIDATES):
    """`premise_check` for every candidate backbone and distance on the validation and the test split, one long
    table with `backbone` and `split` columns: the workbench's backbone if it names one, else the profile's
    stand-ins (`world.weights.candidate_backbones`)."""
    import pandas as pd

    candidates = {Path(wb.backbone).name: wb.backbone} if wb.backbone else candidate_backbones(wb.p, wb.run_dir)
    return pd.concat([premise_check(wb, path, split, distances).assign(backbone=name, split=split)
                      for name, path in candidates.items() for split in ("val", "test")], ignore_index=True)


def choose_pipeline(premise) -> dict:
    """The backbone and distance whose frozen, perturbed reconstruction distance separates reals from all fakes best
    on the validation split (AUC; the test split is never used to choose): {"backbone", "distance", "val_AUC"}."""
    v = premise[(premise.split == "val") & (premise.family == "all fakes") & (premise.score == "d (frozen, perturbed)")]
    best = v.loc[v["AUC"].idxmax()]
    return {"backbone": str(best.backbone), "distance": str(best.distance), "val_AUC": float(best.AUC)}


@torch.no_grad()
def backbone_fidelity(base: ImageVariation, images: np.ndarray, df, n_steps: int, distance: str,
                      per_group: int = 48, progress: bool = False):
    """How faithfully a frozen backbone reconstructs each group of images (the premise of CRAFT's Figure 1): PSNR
    (dB) and `distance` of the VAE round trip D(E(x)) and of the full n-step DDIM inversion + reconstruction, for
    the test-domain reals, the train-domain reals of the validation split, and each family's test fakes."""
    import pandas as pd

    dist = make_distance(distance, base.vae)
    groups = {"real (test domain)": (df.label == 0) & (df.split == "test"),
              "real (train domain, val split)": (df.label == 0) & (df.split == "val")}
    groups.update({f: (df.family == f) & (df.split == "test") for f in df.family.unique() if f != "real"})
    rows = []
    for name, mask in tqdm(groups.items(), desc="backbone fidelity", disable=not progress):
        x = to_tensor(images[np.flatnonzero(mask.to_numpy())[:per_group]])
        row = {"group": name, "n": len(x)}
        for kind, rec in (("vae", vae_roundtrip(base.vae, x)), (f"ddim{n_steps}", ddim_roundtrip(base, x, n_steps))):
            rec = rec.clamp(-1, 1)
            row[f"{kind}_psnr_db"] = float(psnr(x, rec).mean())
            row[f"{kind}_{distance_label(dist)}"] = float(torch.cat([dist(a, b) for a, b in
                                                                   zip(x.split(64), rec.split(64))]).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def scaled_k(k_of_50: int, n_steps: int) -> int:
    """A paper k (of 50 DDIM steps) at the profile's step count: the same share of the trajectory, at least 1."""
    return max(1, min(n_steps, round(k_of_50 * n_steps / 50)))


BASELINE, PERTURBATION_ONLY = "baseline (no fine-tune)", "perturbation only"   # Table 2's rows without fine-tuning


def table2_name(loss: str, perturb: bool) -> str:
    """The name of a fine-tuned Table 2 row: '<LOSS> + CE', with ' + perturbation' when the latent is perturbed."""
    return f"{loss.upper()} + CE{' + perturbation' if perturb else ''}"


FULL_MODEL = table2_name("cr", True)   # the paper's CRAFT: CR + CE with the perturbation
PAIRED_CONTROLS = [(table2_name("cr", on), table2_name("l1", on)) for on in (False, True)]   # one change: the loss


def ablation_variants(p) -> dict[str, dict[str, CraftConfig]]:
    """The CRAFT variants of paper Tables 2, 5 and 6 and of the lambda / m / delta sweeps (the groups named in
    `p.ablation.groups`): each the profile's CraftConfig with one change (so the full-model rows are the same fitted
    model as notebook 03's CRAFT); Table 5's 'w/o fine-tune' row is the Table 2 baseline, as in the paper."""
    c, a = p.craft, p.ablation
    frozen = dict(train_encoder=False, train_unet=False, train_decoder=False)
    table2 = {BASELINE: replace(c, perturb=False, **frozen), PERTURBATION_ONLY: replace(c, **frozen)}
    for on in (False, True):
        for loss in ("l1", "l2", "cr"):
            table2[table2_name(loss, on)] = replace(c, loss=loss, perturb=on)
    table5 = {"w/o fine-tune": table2[BASELINE]}   # as the paper's: its Table 2 baseline
    for enc in (False, True):
        for unet in (False, True):
            for dec in (False, True):
                if enc or unet or dec:
                    name = " + ".join(n for n, on in (("encoder", enc), ("UNet", unet), ("decoder", dec)) if on)
                    table5[name] = replace(c, train_encoder=enc, train_unet=unet, train_decoder=dec)
    ks = sorted({scaled_k(k, c.n_steps) for k in a.k_of_50})
    groups = {"table2": table2, "table5": table5,
              "table6": {f"k={k} of {c.n_steps}": replace(c, k=k) for k in ks},
              "lambda": {f"lambda={v:g}": replace(c, lam=v) for v in a.lams},
              "margin": {f"m={v:g}": replace(c, m=v) for v in a.margins},
              "delta": {f"delta={v:g}": replace(c, delta=v) for v in a.deltas}}
    unknown = set(a.groups) - set(groups)
    if unknown:
        raise ValueError(f"unknown ablation groups {sorted(unknown)}; known: {list(groups)}")
    return {g: v for g, v in groups.items() if g in a.groups}
