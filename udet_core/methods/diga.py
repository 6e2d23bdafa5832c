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
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from udet_core.core.io import atomic_write_json
from udet_core.core.profiles import DigaConfig
from udet_core.engine.losses import diga_loss, diga_total_loss, gduf_total_loss
from udet_core.engine.train import Objective, fit
from udet_core.methods.gduf import UniGenDet, batch_strata, mixed_task_accelerator


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
    """The student (a GDUF model, trained), its projector and the frozen teacher: a copy of the GDUF model (the
    paper's detector), or `teacher` (a control: e.g. the model before GDUF, which never learned to detect)."""

    def __init__(self, gduf: UniGenDet, cfg: DigaConfig, teacher: UniGenDet | None = None):
        self.cfg = cfg
        t = teacher or gduf
        self.teacher = UniGenDet(t.cfg, copy.deepcopy(t.model).eval().requires_grad_(False), t.tokenizer, t.vae)
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
        t = s.step_terms(model, batch, hidden_layers=(self.cfg.student_layer,))
        l_fm = t.l_gen
        l_diga = l_fm.new_zeros(())
        if t.generation is not None:
            states = t.generation["hidden"][self.cfg.student_layer][:, t.caption_len:]
            l_diga = diga_loss(projector(states), teacher_features(self.teacher, x[task == 1], self.teacher_layer))
        total = gduf_total_loss(t.l_cls, t.l_exp, diga_total_loss(l_fm, l_diga, self.cfg.lam), s.cfg.w_cls, s.cfg.w_exp,
                                1.0)
        return total, {"L_cls": t.l_cls.item(), "L_exp": t.l_exp.item(), "L_FM": l_fm.item(), "L_DIGA": l_diga.item()}

    def train(self, images: np.ndarray, df: pd.DataFrame, *, seed: int, out_dir=None, progress: bool = True,
              checkpoint_every: int = 100) -> list[dict]:
        """DIGA training of student + projector (accelerate; checkpoints in `out_dir`, resumed on rerun)."""
        data = self.student.training_tensors(images, df, seed, gen_ratio=self.cfg.gen_ratio)
        obj = Objective("diga", self.loss, [{"params": self.student.model.parameters()},
                                            {"params": self.projector.parameters()}], lr=self.cfg.lr)
        history = fit({"model": self.student.model, "projector": self.projector}, [obj], data, steps=self.cfg.steps,
                      batch_size=self.cfg.batch_size, seed=seed, out_dir=out_dir, checkpoint_every=checkpoint_every,
                      desc="DIGA", progress=progress, accelerator=mixed_task_accelerator(), strata=batch_strata(data))
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


