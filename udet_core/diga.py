"""UniGenDet stage 2, DIGA: detector-informed generative alignment (DESIGN §4, paper §3.3, eq. 10-11).

A frozen copy of the GDUF model is the teacher: f_D(x) are its states of the clean real image's ViT tokens at
`teacher_layer` (default the last block, as the paper; the official code takes layer 8), RMS-normed and resized to
the latent grid, as the official code does. The student is the GDUF model itself, trained on:
  generation rows (captioned reals):  L_FM + lam * L_DIGA, L_DIGA = -mean_n cos(h_phi(g_l(x_t))_n, f_D(x)_n)
  detection rows (real/fake balanced): the GDUF detection terms (eq. 6-7), so the student stays a detector.
h_phi is a trainable projector (official: Linear(H, 4H) - GELU - Linear(4H, H)). The released official DIGA trainer
never applies the alignment term; here a test shows it reaches the generation expert's gradients.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .gduf import UniGenDet, mixed_task_accelerator
from .losses import diga_loss, diga_total_loss, gduf_total_loss
from .profiles import DigaConfig
from .runs import atomic_write_json
from .train import Objective, fit


class Projector(nn.Sequential):
    """h_phi: the generator's width -> the detector's width (official: Linear(H, 4H) - GELU - Linear(4H, H))."""

    def __init__(self, width: int, teacher_width: int, mult: int = 4):
        super().__init__(nn.Linear(width, mult * width), nn.GELU(), nn.Linear(mult * width, teacher_width))


@torch.no_grad()
def teacher_features(teacher: UniGenDet, x: torch.Tensor, layer: int) -> torch.Tensor:
    """f_D(x): the frozen detector's states of the ViT tokens of clean images `x` after `layer` blocks, RMS-normed
    and resized (bilinear) to the latent token grid -> (B, latent tokens, H_teacher)."""
    B = len(x)
    out = teacher.detection_prefix(x, hidden_layers=(layer,))
    n_vae, n_vit = teacher.model.image_token_counts()
    f = out["hidden"][layer][:, n_vae:n_vae + n_vit]
    f = F.rms_norm(f, f.shape[-1:])
    g, gl = int(round(n_vit ** 0.5)), int(round(n_vae ** 0.5))
    f = f.transpose(1, 2).reshape(B, -1, g, g)
    if g != gl:
        f = F.interpolate(f, size=(gl, gl), mode="bilinear", align_corners=False)
    return f.flatten(2).transpose(1, 2)


class Diga:
    """The student (a GDUF model, trained), its projector and the frozen teacher (a copy of the GDUF model)."""

    def __init__(self, gduf: UniGenDet, cfg: DigaConfig):
        self.cfg = cfg
        self.teacher = UniGenDet(gduf.cfg, copy.deepcopy(gduf.model).eval().requires_grad_(False), gduf.tokenizer, gduf.vae)
        self.student = gduf
        self.teacher_layer = cfg.teacher_layer or self.teacher.model.cfg.num_layers
        if not 1 <= cfg.student_layer <= gduf.model.cfg.num_layers:
            raise ValueError(f"student_layer {cfg.student_layer} outside 1..{gduf.model.cfg.num_layers}")
        H = gduf.model.cfg.hidden_size
        self.projector = Projector(H, self.teacher.model.cfg.hidden_size, cfg.projector_mult)

    def loss(self, modules: dict, batch: tuple):
        """Eq. 11 on the generation rows (+ the GDUF detection terms on the balanced detection rows).
        Returns (total, {term: value})."""
        model, projector, s = modules["model"], modules["projector"], self.student
        x, task = batch[0], batch[-1]
        l_cls, l_exp, l_fm, gen_out, n_caption = s.step_terms(model, batch, hidden_layers=(self.cfg.student_layer,))
        l_diga = l_fm.new_zeros(())
        if gen_out is not None:
            states = gen_out["hidden"][self.cfg.student_layer][:, n_caption:]
            l_diga = diga_loss(projector(states), teacher_features(self.teacher, x[task == 1], self.teacher_layer))
        total = gduf_total_loss(l_cls, l_exp, diga_total_loss(l_fm, l_diga, self.cfg.lam), s.cfg.w_cls, s.cfg.w_exp, 1.0)
        return total, {"L_cls": l_cls.item(), "L_exp": l_exp.item(), "L_FM": l_fm.item(), "L_DIGA": l_diga.item()}

    def train(self, images: np.ndarray, df: pd.DataFrame, *, seed: int, out_dir=None, progress: bool = True,
              checkpoint_every: int = 100) -> list[dict]:
        """DIGA training of student + projector (accelerate; checkpoints in `out_dir`, resumed on rerun)."""
        data = self.student.training_tensors(images, df, seed, gen_ratio=self.cfg.gen_ratio)
        obj = Objective("diga", self.loss, [{"params": self.student.model.parameters()},
                                            {"params": self.projector.parameters()}], lr=self.cfg.lr)
        history = fit({"model": self.student.model, "projector": self.projector}, [obj], data, steps=self.cfg.steps,
                      batch_size=self.cfg.batch_size, seed=seed, out_dir=out_dir, checkpoint_every=checkpoint_every,
                      desc="DIGA", progress=progress, accelerator=mixed_task_accelerator())
        self.student.model.eval()
        return history

    def save(self, folder, extra: dict | None = None) -> Path:
        """The student as a complete UniGenDet checkpoint, plus projector.safetensors and diga.json."""
        from dataclasses import asdict
        from safetensors.torch import save_file
        folder = Path(folder)
        self.student.save(folder, extra)
        save_file({k: v.contiguous() for k, v in self.projector.state_dict().items()}, str(folder / "projector.safetensors"))
        atomic_write_json(folder / "diga.json", {"config": asdict(self.cfg), "teacher_layer": self.teacher_layer})
        return folder


# ------------------------------------------------------------------ cached runs and the generation metrics

def fitted_diga(wb, *, seed: int, p=None, force: bool = False) -> tuple[UniGenDet, list[dict]]:
    """The GDUF model of `seed` (the registry's `unigendet` artifact, profile `p`, default the workbench's) after DIGA
    with `p.diga`, trained on the workbench's train split; cached under `<run_dir>/artifacts/diga-<hash>` (keyed by
    the DIGA config and the teacher)."""
    from .metrics import calibrate_threshold
    from .benchmark import method_artifact
    p, images, df, progress = p or wb.p, wb.images, wb.df, wb.progress
    teacher = wb.fitted("unigendet", p=p, seed=seed)
    art = method_artifact(wb.run_dir, "diga", p, p.diga, teacher.folder.name, seed)
    if art.done and not force:
        return UniGenDet.load(art.path), json.loads((art.path / "unigendet.json").read_text()).get("history", [])
    out = art.begin()
    torch.manual_seed(seed)
    diga = Diga(UniGenDet.load(teacher.folder), p.diga)
    train = (df["split"] == "train").to_numpy()
    history = diga.train(images[train], df[train].reset_index(drop=True), seed=seed, out_dir=out, progress=progress)
    val = (df["split"] == "val").to_numpy()
    diga.student.threshold = calibrate_threshold(diga.student.probabilities(images[val]), df["label"].to_numpy()[val])
    diga.save(out, {"history": history})
    art.commit(seed=seed, teacher=str(teacher.folder))
    return diga.student, history


def feature_extractor(p, run_dir, progress: bool = False):
    """(name, images -> features): torchvision's ImageNet Inception-v3 pool features when its weights are in the
    torch hub cache, otherwise the workbench feature net trained on real crops (a cached artifact)."""
    from .models.featnet import INCEPTION_FILE, load_featnet, save_featnet, train_featnet
    from .runs import Artifact
    if (Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE).is_file():
        from torchvision.models import Inception_V3_Weights, inception_v3
        net = inception_v3(weights=Inception_V3_Weights.IMAGENET1K_V1).eval()
        net.fc = nn.Identity()

        def inception(images):
            from .data.images import to_tensor
            x = F.interpolate((to_tensor(images) + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
            mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
            with torch.no_grad():
                return torch.cat([net((b - mean) / std) for b in x.split(64)]).numpy()
        return "Inception-v3 (ImageNet weights)", inception
    if p.zoo:
        from . import zoo
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
    the crops are not in the manifest) and those crops, intra-prompt diversity over `per_prompt` samples of
    `n_prompts` of the captions, and the share of samples each frozen judge (registry detectors fitted with `seed`)
    calls real. Returns (one row per stage, {"samples": {stage: images}, "reference": crops, "prompts", "info"})."""
    from .data.sources import caption_for, random_crops
    from .distances import LPIPSDistance
    from .metrics import frechet_distance, intra_prompt_diversity, judged_real_share
    from .progress import tqdm
    p, progress = wb.p, wb.progress
    g = p.geneval
    feat_name, features = feature_extractor(p, wb.run_dir, progress)
    crops, meta = random_crops(p.data.split_photos["train"], g.n_samples, p.data.resolution, p.data.crop_scales,
                               np.random.default_rng([p.seed, 4242]))
    real_feats = features(crops)
    prompts = [caption_for(m["source"], m["scale"]) for m in meta]
    diverse = list(dict.fromkeys(prompts))[:g.n_prompts]
    lpips = LPIPSDistance("vgg")
    judges = {name: wb.fitted(name, seed=seed, progress=False) for name in g.judges}
    rows, samples = [], {}
    for stage, ug in tqdm(models.items(), desc="generation metrics", disable=not progress):
        gen = np.concatenate([ug.generate(prompts[i:i + 64], seeds=range(i, min(i + 64, g.n_samples)))
                              for i in range(0, g.n_samples, 64)])
        samples[stage] = gen
        groups = [ug.generate([c] * g.per_prompt, seeds=range(g.per_prompt)) for c in diverse]
        row = {"stage": stage, "FID-style": frechet_distance(features(gen), real_feats),
               "diversity": intra_prompt_diversity(groups, lpips)}
        for name, det in judges.items():
            row[f"judged real by {name}"] = judged_real_share(det.score(gen), det.threshold)
        rows.append(row)
    info = {"features": feat_name, "feature_dim": real_feats.shape[1], "diversity_distance": lpips.name,
            "n_samples": g.n_samples,
            "reference": "fresh crops of the training photos", "judges": list(g.judges)}
    return pd.DataFrame(rows), {"samples": samples, "reference": crops, "prompts": prompts, "info": info}
