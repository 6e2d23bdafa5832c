"""UniGenDet's studies on a workbench: the explanation metrics of Table 1/6 and the DIGA experiment of Table 4
(teachers, feature extractors, generation metrics)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from udet_core.core.io import atomic_write_json
from udet_core.core.keys import Artifact
from udet_core.core.progress import tqdm
from udet_core.data.images import to_tensor
from udet_core.data.sources import caption_for, random_crops
from udet_core.engine.distances import LPIPSDistance
from udet_core.engine.metrics import (
    bootstrap_mean_interval,
    calibrate_threshold,
    explanation_metrics,
    frechet_distance,
    intra_prompt_diversity,
    judged_real_share,
    mean_std_table,
    summary,
    wilson_interval,
)
from udet_core.methods.base import create_detector
from udet_core.methods.diga import Diga
from udet_core.methods.gduf import (
    UniGenDet,
    UniGenDetDetector,
    cached_answers,
    without_generation,
)
from udet_core.models.featnet import INCEPTION_FILE, load_featnet, save_featnet
from udet_core.study.evaluation import (
    Evaluation,
    focus_subset,
    ordering_claim,
    paired_differences,
    summary_subsets,
)
from udet_core.world import zoo
from udet_core.world.benchmark import method_artifact
from udet_core.world.trainers import train_featnet
from udet_core.world.weights import weights_for


def explanation_eval(det: UniGenDetDetector, wb):
    """Paper Table 1/6 metrics of a fitted UniGenDet on the test split, one row per summary subset: bAcc, F1,
    ROUGE-L, CSS of the answers (and how many could not be parsed), beside the head's bacc/AP/AUC and the verdict
    word's log-odds as a score (AUC, and bacc at its validation threshold). Returns (rows, the answers with their
    test rows)."""
    x_test, test = wb.for_detector("unigendet").split("test")
    out = cached_answers(det, x_test, wb.progress)
    rows = []
    for subset, m in summary_subsets(test).items():
        y = test["label"].to_numpy()[m]
        head = summary(y, out["prob_fake"].to_numpy()[m], det.threshold)
        verdict = summary(y, out["verdict_log_odds"].to_numpy()[m], det.model.verdict_threshold)
        rows.append({"subset": subset, **explanation_metrics(y, list(test["explanation"][m]), list(out["explanation"][m])),
                     "head_bacc": head["bacc"], "head_AP": head["AP"], "head_AUC": head["AUC"],
                     "verdict_AUC": verdict["AUC"], "verdict_bacc": verdict["bacc"]})
    return pd.DataFrame(rows), pd.concat([test, out.add_prefix("pred_")], axis=1)


TABLE6_METRICS = ["bAcc", "F1", "ROUGE-L", "CSS", "unparsed", "head_bacc", "head_AP", "head_AUC", "verdict_AUC",
                  "verdict_bacc"]


def table6_variants(p) -> dict:
    """Paper Table 6's GDUF variants: the full model, w/o SMSA, and w/o the generation task at equal detection
    samples (`methods.gduf.without_generation`)."""
    return {"UniGenDet": p.gduf, "w/o SMSA": replace(p.gduf, smsa=False), "w/o generation task": without_generation(p.gduf)}


def table6(wb, seeds, force: bool = False) -> tuple[Evaluation, dict]:
    """Paper Table 6 on the workbench: each variant (`table6_variants`) fitted per seed (cached detector artifacts,
    so notebook 01 trains them and notebook 04 reads them back) and evaluated by `explanation_eval`. Returns
    (Evaluation: mean ± std of `TABLE6_METRICS` per subset x variant, and the long per-seed table;
    {(variant, seed): (fitted detector, its test answers)})."""
    rows, fitted_ = [], {}
    for name, cfg in table6_variants(wb.p).items():
        for s in seeds:
            det = wb.fitted("unigendet", p=replace(wb.p, gduf=cfg), seed=s, force=force)
            table, answers = explanation_eval(det, wb)
            fitted_[name, s] = det, answers
            rows.append(table.assign(variant=name, seed=s))
    long = pd.concat(rows, ignore_index=True)
    return Evaluation(mean_std_table(long, ["subset", "variant"], TABLE6_METRICS), long), fitted_


def table6_claims(long: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 6's ordering (the full model beats each ablation), per metric on the focus subset (reals +
    held-out families where the manifest assigns roles), through the one claim checker `evaluation.ordering_claim`:
    means over seeds and whether the smallest gap exceeds the seeds' spread (None with one seed)."""
    focus = focus_subset(long)
    return pd.DataFrame([ordering_claim(long, f"UniGenDet > {v}", ["UniGenDet"], [v], metric, focus)
                         for v in long["variant"].unique() if v != "UniGenDet"
                         for metric in ("bAcc", "F1", "ROUGE-L", "CSS", "head_AUC", "verdict_AUC")])


def start_model_of(wb, seed: int | None = None, p=None) -> UniGenDet:
    """The model GDUF starts from on this workbench (`UniGenDetDetector.start_model`; profile `p`, default the
    workbench's; `seed`, default the workbench's), in eval mode: what the linear probes read, and DIGA's non-detector
    teacher."""
    wb = wb.for_detector("unigendet")
    p = p or wb.p
    det = create_detector("unigendet", p, wb.run_dir, weights=weights_for(UniGenDetDetector, p, wb.run_dir, None))
    ug = det.start_model(wb.split("train")[1], wb.seed if seed is None else seed)
    ug.model.eval()
    return ug


def high_pass(images: np.ndarray) -> np.ndarray:
    """(N, S*S*3) pixels minus their 3x3 box blur: the high frequencies most forensic detectors read."""
    x = to_tensor(images)
    return (x - F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)).flatten(1).numpy()


def linear_probes(ug: UniGenDet, wb) -> pd.DataFrame:
    """Does a representation carry the real/fake signal before GDUF? A class-balanced logistic regression on each
    of `ug.features` (the model GDUF starts from) and on high-pass pixels, fitted on the train split and scored
    (AUC) on the validation and test splits; `train_AUC` shows how far each probe fits its training rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    wb = wb.for_detector("unigendet")   # the images at UniGenDet's input size (udet-mini: the profile's)
    splits = {name: wb.split(name) for name in ("train", "val", "test")}
    feats = {name: {**ug.features(x), "high-pass pixels (no model)": high_pass(x)} for name, (x, _) in splits.items()}
    rows = []
    for rep in feats["train"]:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000))
        clf.fit(feats["train"][rep], splits["train"][1]["label"])
        rows.append({"representation": rep, "dims": feats["train"][rep].shape[1],
                     **{f"{name}_AUC": roc_auc_score(df["label"], clf.predict_proba(feats[name][rep])[:, 1])
                        for name, (_, df) in splits.items()}})
    return pd.DataFrame(rows)


DIGA_TEACHERS = ("GDUF", "before GDUF")   # the paper's detector teacher; the control that never learned to detect


def fitted_diga(wb, *, seed: int, p=None, teacher: str = "GDUF", force: bool = False) -> tuple[UniGenDet, list[dict]]:
    """The GDUF model of `seed` (the registry's `unigendet` artifact, profile `p`, default the workbench's) after DIGA
    with `p.diga`, trained on the workbench's train split, aligned to `teacher` (`DIGA_TEACHERS`: the frozen GDUF
    model itself, as the paper, or the model GDUF started from, `start_model_of`); cached under
    `<run_dir>/artifacts/diga-<hash>` (keyed by the DIGA config and the teacher)."""
    if teacher not in DIGA_TEACHERS:
        raise ValueError(f"unknown DIGA teacher {teacher!r}; choose one of {DIGA_TEACHERS}")
    p, images, df, progress = p or wb.p, wb.images, wb.df, wb.progress
    gduf = wb.fitted("unigendet", p=p, seed=seed)
    art = method_artifact(wb.run_dir, "diga", p, p.diga, gduf.folder.name, seed,
                          *([] if teacher == "GDUF" else [teacher]))
    if art.done and not force:
        return UniGenDet.load(art.path), json.loads((art.path / "unigendet.json").read_text()).get("history", [])
    out = art.begin()
    control = None if teacher == "GDUF" else start_model_of(wb, seed, p)
    torch.manual_seed(seed)   # the projector's init: the same for every teacher
    diga = Diga(UniGenDet.load(gduf.folder), p.diga, control)
    train = (df["split"] == "train").to_numpy()
    history = diga.train(images[train], df[train].reset_index(drop=True), seed=seed, out_dir=out, progress=progress)
    val = (df["split"] == "val").to_numpy()
    diga.student.threshold = calibrate_threshold(diga.student.probabilities(images[val]), df["label"].to_numpy()[val])
    diga.save(out, {"history": history})
    art.commit(seed=seed, teacher=str(gduf.folder) if teacher == "GDUF" else teacher)
    return diga.student, history


DIGA_PAIRS = [("+DIGA", "+GDUF, λ = 0"), ("+DIGA", "+DIGA, teacher before GDUF")]   # one change each, same start
DIGA_METRICS = ["FID-style", "FID-style, CNNSpot features", "judged real by cnnspot"]


def diga_paired(long: pd.DataFrame) -> pd.DataFrame:
    """DIGA's paired controls (`DIGA_PAIRS`) per seed on the generation metrics of `generation_metrics` (long: one
    row per stage x seed), through `evaluation.paired_differences`: a negative FID-style difference and a positive
    judged-real difference favour +DIGA."""
    by_stage = long.rename(columns={"stage": "variant"}).assign(subset="generation")
    return paired_differences(by_stage, DIGA_PAIRS, [m for m in DIGA_METRICS if m in long], ["generation"])


def teacher_check(det_long: pd.DataFrame, stage: str = "+GDUF") -> pd.DataFrame:
    """Is there an authenticity signal for DIGA to align to? The teacher's (+GDUF) test AUC per subset: mean over
    seeds, its 95 % bootstrap interval over seeds, and whether that interval lies above chance (None below 3 seeds)."""
    rows = []
    for subset, t in det_long[det_long["stage"] == stage].groupby("subset", sort=False):
        lo, hi = bootstrap_mean_interval(t["AUC"].to_numpy())
        rows.append({"teacher": stage, "subset": subset, "seeds": len(t), "AUC_mean": float(t["AUC"].mean()),
                     "boot_95_low": lo, "boot_95_high": hi, "detects": None if np.isnan(lo) else bool(lo > 0.5)})
    return pd.DataFrame(rows)


def feature_extractor(p, run_dir, progress: bool = False):
    """(name, images -> features): torchvision's ImageNet Inception-v3 pool features when its weights are in the
    torch hub cache, otherwise the workbench feature net trained on real crops (a cached artifact)."""
    if (Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE).is_file():
        from torchvision.models import Inception_V3_Weights, inception_v3
        net = inception_v3(weights=Inception_V3_Weights.IMAGENET1K_V1).eval()
        net.fc = nn.Identity()

        def inception(images):
            x = F.interpolate((to_tensor(images) + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
            mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
            with torch.no_grad():
                return torch.cat([net((b - mean) / std) for b in x.split(64)]).numpy()
        return "Inception-v3 (ImageNet weights)", inception
    if p.zoo:
        return "workbench feature net (pretrained zoo; substitute for Inception)", load_featnet(zoo.path(p, "featnet")).features
    art = Artifact(run_dir, "featnet", p.data.resolution, p.geneval.featnet_steps, p.geneval.feature_dim, p.seed)
    if not art.done:
        out = art.begin()
        net, history = train_featnet(p.data.resolution, p.geneval.featnet_steps, seed=p.seed, out_dir=out,
                                     progress=progress, feature_dim=p.geneval.feature_dim)
        save_featnet(net, out)
        atomic_write_json(out / "history.json", history)
        art.commit(seed=p.seed)
    return "workbench feature net (substitute for Inception)", load_featnet(art.path).features


def generation_metrics(models: dict, wb, *, seed: int) -> tuple[pd.DataFrame, dict]:
    """UniGenDet Table 4 / D analogue for each {stage: UniGenDet}: FID-style distance between `n_samples` images
    generated from the captions of fresh random crops of the training photos (the distribution every stage learned;
    the crops are not in the manifest) and those crops, in two feature spaces (`feature_extractor`'s, and the
    penultimate layer of the CNNSpot checkpoint fitted with `seed`: texture-sensitive), intra-prompt diversity over
    `per_prompt` samples of `n_prompts` of the captions, and the share of samples each frozen judge (registry
    detectors fitted with `seed`) calls real with its 95 % Wilson interval over the generated images. Returns (one
    row per stage, {"samples": {stage: images}, "reference": crops, "prompts", "info"})."""
    p, progress = wb.p, wb.progress
    g = p.geneval
    feat_name, features = feature_extractor(p, wb.run_dir, progress)
    crops, meta = random_crops(p.data.split_photos["train"], g.n_samples, p.data.resolution, p.data.crop_scales,
                               np.random.default_rng([p.seed, 4242]))
    judges = {name: wb.fitted(name, seed=seed, progress=False) for name in g.judges}
    cnnspot = judges.get("cnnspot") or wb.fitted("cnnspot", seed=seed, progress=False)
    spaces = {"FID-style": features, "FID-style, CNNSpot features": cnnspot.features}
    real_feats = {col: f(crops) for col, f in spaces.items()}
    prompts = [caption_for(m["source"], m["scale"]) for m in meta]
    diverse = list(dict.fromkeys(prompts))[:g.n_prompts]
    lpips = LPIPSDistance("vgg")
    rows, samples = [], {}
    for stage, ug in tqdm(models.items(), desc="generation metrics", disable=not progress):
        gen = np.concatenate([ug.generate(prompts[i:i + 64], seeds=range(i, min(i + 64, g.n_samples)))
                              for i in range(0, g.n_samples, 64)])
        samples[stage] = gen
        groups = [ug.generate([c] * g.per_prompt, seeds=range(g.per_prompt)) for c in diverse]
        row = {"stage": stage, **{col: frechet_distance(f(gen), real_feats[col]) for col, f in spaces.items()},
               "diversity": intra_prompt_diversity(groups, lpips)}
        for name, det in judges.items():
            share = judged_real_share(det.score(gen), det.threshold)
            lo, hi = wilson_interval(round(share * len(gen)), len(gen))   # share * n: the count, exactly
            row.update({f"judged real by {name}": share, f"judged real by {name}, 95% low": lo,
                        f"judged real by {name}, 95% high": hi})
        rows.append(row)
    info = {"features": feat_name, "feature_dim": real_feats["FID-style"].shape[1],
            "cnnspot_feature_dim": real_feats["FID-style, CNNSpot features"].shape[1], "diversity_distance": lpips.name,
            "n_samples": g.n_samples,
            "reference": "fresh crops of the training photos", "judges": list(g.judges)}
    return pd.DataFrame(rows), {"samples": samples, "reference": crops, "prompts": prompts, "info": info}
