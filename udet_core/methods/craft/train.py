"""CRAFT's fine-tuning, top to bottom (paper §3.3-3.4, Algorithm 1), on any data set of rows (`data.dataset`: streamed
from disk, or `ArrayDataset` in memory; one path for both):

  1. mu_real (eq. 2) from the real training images, inverted batch by batch;
  2. the frozen prefix z_k of every training image and the frozen pipeline's distance d, batch by batch;
  3. from those distances: the CR margins' unit and the classifier's warm start (`Craft.start_from_frozen`);
  4. `engine.train.fit` of the suffix and the classifier on class-balanced draws (images read back beside their cached
     z_k), with model selection on the validation split from step 0 (`EarlyStopping`), restored to the kept check.

Every batch's latents are cached in `cache_dir` by content (backbone, settings, the batch's images), so seeds and
variants that agree on them share them. Held in memory: the latents (4 channels at 1/8 of the side, 1/48 of the float
pixels) and the validation split.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from udet_core.core.keys import array_key, cached_tensors
from udet_core.core.profiles import config_hash
from udet_core.core.progress import tqdm
from udet_core.data.dataset import RowExamples, first_per_class, pixels
from udet_core.data.images import to_tensor
from udet_core.engine.train import ModelSelection, Objective, balanced
from udet_core.engine.train import fit as fit_steps
from udet_core.methods.craft.model import Craft

TRAIN_PROBE_PER_CLASS = 32   # training images per class on which the learning curve is drawn beside validation


def cache_dir(run_dir) -> Path:
    """Where a run keeps CRAFT's real centres and frozen-prefix latents."""
    return Path(run_dir) / "artifacts" / "craft-cache"


# ------------------------------------------------------------------ the frozen prefix, computed once

def prefix_key(model: Craft, fast: bool = False) -> dict:
    """Everything the frozen prefix depends on besides the images (the real centre by its bytes)."""
    c = model.cfg
    mu = (model.mu_fast if fast else model.mu) if c.perturb else None
    return {"backbone": model.backbone_key, "n_steps": c.n_steps, "frozen_steps": model.frozen_steps,
            "fast_k": c.k if fast else None, "perturb": c.perturb, "lam": c.lam if c.perturb else None,
            "tau_scale": c.tau_scale if c.perturb else None, "mu": None if mu is None else array_key(mu)}


def prefix_cache(model: Craft, x: torch.Tensor, batch_size: int = 64, fast: bool = False,
                 progress: bool = False, cache_dir=None) -> torch.Tensor:
    """z_k for every image, computed once (the frozen prefix does not change while the suffix trains). With
    `cache_dir`, kept in a file keyed by everything the prefix depends on (`prefix_key`) and by the images, so
    seeds, variants and evaluations that agree on it share one computation."""
    def compute():
        return {"z": torch.cat([model.prefix(b, fast) for b in tqdm(x.split(batch_size), desc="frozen-prefix cache",
                                                                      disable=not progress)])}
    key = config_hash(prefix_key(model, fast), array_key(x))
    return cached_tensors(cache_dir and Path(cache_dir) / f"craft-prefix-{key}.safetensors", compute)["z"]


# ------------------------------------------------------------------ the signal audit and model selection

def signal_audit(y: np.ndarray, p_fake: np.ndarray, d: np.ndarray) -> dict:
    """A learned score beside the raw signal it is built on: AUC of P(fake) and AUC of d, the classes' mean d, and
    `inverted` when the classifier ranks against its signal (AUC(P) ~ 1 - AUC(d) while d separates the classes)."""
    from sklearn.metrics import roc_auc_score
    auc_p, auc_d = float(roc_auc_score(y, p_fake)), float(roc_auc_score(y, d))
    return {"auc": auc_p, "auc_d": auc_d, "d_real": float(d[y == 0].mean()), "d_fake": float(d[y == 1].mean()),
            "inverted": bool(abs(auc_d - 0.5) > 0.05 and abs(auc_p - (1 - auc_d)) < abs(auc_p - auc_d))}


def signal_columns(y: np.ndarray, p_fake: np.ndarray, d: np.ndarray) -> dict:
    """`signal_audit` as table columns beside a summary of P(fake): AUC of d, the classes' mean d, `inverted`."""
    a = signal_audit(y, p_fake, d)
    return {"AUC_of_d": a["auc_d"], "mean_d_real": a["d_real"], "mean_d_fake": a["d_fake"], "inverted": a["inverted"]}


class EarlyStopping(ModelSelection):
    """CRAFT's model selection (`train.ModelSelection`) on the validation AUC of P(fake), from step 0 (the frozen,
    perturbed pipeline with the warm-started classifier) on: every `cfg.eval_every` steps the signal audit
    (`signal_audit`) of the validation split and of a fixed class-balanced training subset; keeps the best check's
    weights (step 0 unless a fine-tuned check beats it) and stops after `cfg.patience` checks without improvement."""

    def __init__(self, model: Craft, x_val: torch.Tensor, y_val: torch.Tensor, cache_dir=None, train_probe=None):
        c = model.cfg
        super().__init__(self.audit, model.trainable(), every=c.eval_every, last=c.steps, patience=c.patience)
        self.model, self.y = model, y_val.numpy()
        self.x, self.z = x_val, prefix_cache(model, x_val, c.eval_batch_size, cache_dir=cache_dir)
        self.probe = train_probe   # (x, z_k, y) of the training subset the learning curve is also drawn on

    def audit(self) -> dict:
        """`signal_audit` of the validation split (`val_*`) and of the training subset (`train_*`), as the model is."""
        c, row = self.model.cfg, {}
        self.model.eval()
        sets = {"val": (self.x, self.z, self.y)}
        if self.probe is not None:
            sets["train"] = (self.probe[0], self.probe[1], self.probe[2].numpy())
        for name, (x, z, y) in sets.items():
            s = self.model.score(x, batch_size=c.eval_batch_size, z=z)
            row.update({f"{name}_{k}": v for k, v in signal_audit(y, s.p_fake, s.distance).items()})
        self.model.suffix.train(), self.model.cls.train()
        return row


def selection_info(history: list[dict]) -> dict:
    """What fine-tuning ran and which step model selection kept (0: the frozen pipeline), with the signal audit of
    the kept step (validation AUC of P(fake) beside the AUC of d) and of step 0."""
    steps = [h for h in history if "craft_loss" in h]
    checks = [h for h in history if "val_auc" in h]
    info = {"final_loss": steps[-1]["craft_loss"] if steps else None, "steps_run": len(steps),
            "chosen_step": checks[-1]["best_step"] if checks else len(steps)}
    kept = next((h for h in checks if h["step"] == info["chosen_step"]), None)
    for name, h in (("chosen", kept), ("step0", checks[0] if checks and checks[0]["step"] == 0 else None)):
        if h is not None:
            info.update({f"{name}_{k}": h[k] for k in ("val_auc", "val_auc_d", "val_d_real", "val_d_fake",
                                                       "val_inverted")})
    return info


# ------------------------------------------------------------------ the fit

@dataclass
class CraftFit:
    """What `fit` returns: the history (the step-0 check first when there is a validation split, then one row per
    step) and the (path, problem) of the training files that could not be read."""
    history: list[dict]
    problems: list = field(default_factory=list)


def fit(model: Craft, train, *, seed: int, out_dir=None, cache_dir=None, progress: bool = True, accelerator=None,
        val=None, workers: int = 0) -> CraftFit:
    """Fine-tune `model` (suffix + classifier) on the rows of the data set `train` (module docstring, steps 1-4);
    `val` = (uint8 images, labels) of the validation rows for model selection from step 0 (`cfg.eval_every`);
    training checkpoints in `out_dir` (a rerun resumes); `workers` DataLoader workers read the images."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    acc = accelerator or Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    c, show = model.cfg, progress and acc.is_local_main_process
    labels = torch.tensor(train.manifest["label"].to_numpy())
    problems = []

    # 1. mu_real (eq. 2): the real training images' inverted latents, batch by batch
    latents = []
    for b in tqdm(train.loader(c.eval_batch_size, workers, rows=np.flatnonzero(labels.numpy() == 0)),
                  desc="real centre", disable=not show):
        problems += b.problems
        if len(b.index):
            latents.append(model.inverted_latents(to_tensor(b.images.numpy()), cache_dir))
    if not latents:
        raise ValueError("no real training image could be read: CRAFT's real centre needs some")
    model.set_center(latents)

    # 2. the frozen prefix z_k and the frozen distance d of every training image; a fixed class-balanced subset
    #    (x, z_k, y) for the learning curve on training data
    z, ok, d = None, torch.zeros(len(train), dtype=torch.bool), torch.zeros(len(train))
    in_probe = set(first_per_class(labels.numpy(), TRAIN_PROBE_PER_CLASS).tolist())
    probe = {}
    for b in tqdm(train.loader(c.eval_batch_size, workers), desc="frozen-prefix cache", disable=not show):
        problems += b.problems
        if len(b.index):
            xb = to_tensor(b.images.numpy())
            zb = prefix_cache(model, xb, c.eval_batch_size, cache_dir=cache_dir)
            z = torch.zeros((len(train), *zb.shape[1:])) if z is None else z
            z[b.index], ok[b.index] = zb, True
            d[b.index] = model.frozen_distances(xb, zb, c.eval_batch_size)
            probe.update({i: (xb[j], zb[j]) for j, i in enumerate(b.index.tolist()) if i in in_probe})
    order = sorted(probe, key=lambda i: (int(labels[i]), i))
    probe = (torch.stack([probe[i][0] for i in order]), torch.stack([probe[i][1] for i in order]), labels[order])

    # 3. the margins' unit and the classifier's warm start, from the frozen distances of the rows that loaded
    rows = torch.nonzero(ok).flatten()
    model.start_from_frozen(d[rows], labels[rows])

    # 4. fine-tuning on class-balanced draws, selected on validation from step 0 (the frozen pipeline) on
    stopper = None
    if val is not None and c.eval_every:
        stopper = EarlyStopping(model, to_tensor(val[0]), torch.tensor(np.asarray(val[1])), cache_dir=cache_dir,
                                train_probe=probe)
    start = [{"step": 0, **stopper(0)}] if stopper is not None else []   # before fit: the frozen weights
    # with no backbone module to fine-tune (Table 2's baseline and 'perturbation only') the classifier warm-started on
    # the frozen distances is the whole detector: more steps of CE cannot change its ranking, only its calibration,
    # which the validation threshold sets anyway
    steps = c.steps if model.tuned_modules() else 0
    history = fit_steps(model.trainable(), [Objective("craft_loss", lambda mods, batch: model.loss(mods, *batch),
                                                      model.param_groups(), lr=c.lr_cls)],
                        RowExamples(train, z, labels), steps=steps, batch_size=c.batch_size, seed=seed,
                        out_dir=out_dir, checkpoint_every=max(25, c.steps // 4), desc="CRAFT fine-tune",
                        progress=progress, accelerator=acc, after_step=stopper,
                        rows=rows[balanced(labels[rows])].numpy(), transform=pixels, num_workers=workers)
    if stopper is not None and stopper.best is not None:
        stopper.restore()
    return CraftFit(start + history, sorted(set(problems)))
