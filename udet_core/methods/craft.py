"""CRAFT: contrastive reconstruction with class-guided latent perturbation, fine-tuning the last k DDIM steps.

Pipeline for an image x (DESIGN §4, paper §3-4):
  z0 = VAE-encode(x)                                 (frozen)
  z_T = DDIM-invert(z0, n steps)                     (frozen base UNet + image encoder)
  mu_real = mean of the real training images' z_T                           eq. 2
  z' = z_T + lam (z_T - mu_real)/(||.|| + eps), ||z'|| <= tau          eq. 4, 10, 11
  z_k = first n-k DDIM sampling steps from z'        (frozen: the *prefix*)
  x_hat = decode(last k DDIM steps from z_k)         (trainable encoder / UNet / decoder: the *suffix*)
Because the prefix is frozen, z_k depends only on the image: it is computed once and cached (`prefix_cache`).
Detection: an MLP on the scalar distance d(x, x_hat) gives P(fake) (eq. 7-9); the threshold is calibrated on
the validation split and stored with the checkpoint.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from udet_core.core.errors import DataError
from udet_core.core.io import atomic_write_json, checkpoint_meta
from udet_core.core.keys import array_key, cached_tensors, content_key, module_key
from udet_core.core.profiles import CraftConfig, config_hash
from udet_core.core.progress import tqdm
from udet_core.core.provenance import Timer
from udet_core.data.dataset import ArrayDataset, RowExamples, pixels
from udet_core.data.images import to_tensor
from udet_core.engine.distances import distance_label, make_distance, resolved_name
from udet_core.engine.losses import (
    craft_ce_loss,
    craft_cr_loss,
    craft_recon_loss,
    craft_total_loss,
)
from udet_core.engine.metrics import calibrate_threshold
from udet_core.engine.train import ModelSelection, Objective, balanced, fit
from udet_core.methods.base import Detector, register
from udet_core.models.backbones import ImageVariation, load_image_variation
from udet_core.models.sampling import (
    ddim_invert,
    ddim_steps,
    decode_latent,
    encode_latent,
    inverse_scheduler,
)

# ------------------------------------------------------------------ one equation, one function


def mean_center(latents: torch.Tensor) -> torch.Tensor:
    """mu_real (eq. 2): the mean of the authentic training images' inverted latents."""
    return latents.mean(0)


def perturb_latent(z: torch.Tensor, mu: torch.Tensor, lam: float, tau: float, eps: float = 1e-6) -> torch.Tensor:
    """z' = z + lam (z - mu)/(||z - mu|| + eps) (eq. 4/10), then rescaled so that ||z'|| <= tau (eq. 11)."""
    diff = z - mu
    norm = diff.flatten(1).norm(dim=1).view(-1, *[1] * (z.dim() - 1))
    zp = z + lam * diff / (norm + eps)
    zn = zp.flatten(1).norm(dim=1).view(-1, *[1] * (z.dim() - 1))
    return zp * torch.clamp(tau / zn, max=1.0)


class DistanceClassifier(nn.Module):
    """f_cls (eq. 7-8) on the scalar distance, monotone by construction: logit = softplus(a) (log d - b), 2 logits.

    The paper's f_cls is "a simple discriminator (e.g. an MLP)" on d, trained with the backbone to tell reals (small d)
    from fakes (large d). An MLP on one scalar is free to rank in either direction; a 1->16->2 MLP started with a
    negative slope in d and ranked the validation images exactly inversely (AUC of P(fake) = 1 - AUC of d; issue #24),
    while its cross-entropy pushed fakes' d down through the backbone, against L_CR. Restricting f_cls to the paper's
    hypothesis (P(fake) rises with d; softplus keeps the slope positive) makes P(fake) rank images exactly as d does,
    so the classifier calibrates d and its gradient agrees with L_CR. Log d: scale invariance across distances.
    `warm_start` fits (a, b) to the frozen pipeline's distances before fine-tuning (step 0 is then a usable detector).
    """

    def __init__(self):
        super().__init__()
        self.raw_slope = nn.Parameter(torch.tensor(math.log(math.e - 1.0)))   # softplus^-1(1): slope 1 in log d
        self.centre = nn.Parameter(torch.tensor(0.0))

    def logit(self, d: torch.Tensor) -> torch.Tensor:
        """log P(fake)/P(real) per image (N,): increasing in d."""
        return nn.functional.softplus(self.raw_slope) * (torch.log(d.clamp_min(1e-12)) - self.centre)

    def forward(self, d):
        logit = self.logit(d)                                         # (N,)
        return torch.stack([torch.zeros_like(logit), logit], dim=-1)  # (N, 2): [real, fake] logits for eq. 8

    @torch.no_grad()
    def warm_start(self, d: torch.Tensor, y: torch.Tensor) -> None:
        """Class-balanced linear discriminant on log d: the centre halfway between the classes' mean log d, the slope
        (mean gap / pooled variance) when fakes reconstruct worse, else a flat 1 (the order stays d's)."""
        ld = torch.log(d.double().clamp_min(1e-12))
        m0, m1 = ld[y == 0].mean(), ld[y == 1].mean()
        var = 0.5 * (ld[y == 0].var() + ld[y == 1].var()) + 1e-6
        slope = float((m1 - m0) / var) if m1 > m0 else 1.0
        self.centre.fill_(float(0.5 * (m0 + m1)))
        self.raw_slope.fill_(slope + math.log(-math.expm1(-slope)))   # softplus^-1(slope)


class Suffix(nn.Module):
    """The trainable part, as one module (one DDP forward per step): the last k DDIM steps with the image
    encoder's conditioning, then the VAE decoder. Frozen members simply have requires_grad=False."""

    def __init__(self, encoder, unet, vae, clip_pixels, scheduler, timesteps):
        super().__init__()
        self.encoder, self.unet, self.vae = encoder, unet, vae
        self.clip_pixels, self.scheduler, self.timesteps = clip_pixels, scheduler, timesteps

    def forward(self, z_k, x):
        if len(self.timesteps):
            cond = self.encoder(self.clip_pixels(x)).image_embeds.unsqueeze(1)
            z_k = ddim_steps(self.unet, self.scheduler, z_k, cond, self.timesteps)
        return decode_latent(self.vae, z_k)


# ------------------------------------------------------------------ the model

@dataclass(frozen=True)
class CraftScores:
    """What CRAFT computes per image: P(fake) (eq. 8, the detector's score) and the distance d it is built on."""
    p_fake: np.ndarray     # (N,) float64
    distance: np.ndarray   # (N,) d(x, x_hat)


class Craft:
    """Frozen base backbone (prefix) + trainable copies (suffix) + distance classifier."""

    def __init__(self, base: ImageVariation, cfg: CraftConfig, mu: torch.Tensor | None = None):
        self.cfg = cfg
        self.base = base
        for m in (base.vae, base.image_encoder, base.unet):
            m.eval().requires_grad_(False)
        self.inverse = inverse_scheduler(base.scheduler)
        self.scheduler = base.scheduler
        # trainable copies only for the modules that train; the others are the frozen base modules
        base.scheduler.set_timesteps(cfg.n_steps)
        self.timesteps = base.scheduler.timesteps.clone()
        # Steps before the first trainable one are frozen and cacheable: the last k when the encoder or UNet
        # trains; all n when only the decoder trains (then the cache holds z_0 and training only decodes).
        self.frozen_steps = cfg.n_steps - cfg.k if (cfg.train_encoder or cfg.train_unet) else cfg.n_steps
        self.suffix = Suffix(copy.deepcopy(base.image_encoder) if cfg.train_encoder else base.image_encoder,
                             copy.deepcopy(base.unet) if cfg.train_unet else base.unet,
                             copy.deepcopy(base.vae) if cfg.train_decoder else base.vae,
                             base.clip_pixels, base.scheduler, self.timesteps[self.frozen_steps:])
        if cfg.train_decoder:  # only the decoder side of the VAE copy trains
            v = self.suffix.vae
            for name, p in v.named_parameters():
                p.requires_grad_(name.startswith(DECODER_PARTS))
        for name in ("encoder", "unet"):
            getattr(self.suffix, name).requires_grad_(getattr(cfg, f"train_{name}"))
        self.cls = DistanceClassifier()
        self.distance = make_distance(cfg.distance, base.vae)
        self.mu, self.mu_fast = mu, None
        self.d_ref: float | None = None   # median frozen distance of the training reals (`start_from_frozen`)
        self.threshold = self.threshold_fast = 0.5
        self.base_path, self._backbone_key = None, None

    @property
    def backbone_key(self) -> str:
        """The base backbone's content key: of its folder when loaded from one (`from_backbone`), else of its
        weights in memory. Every cache of the frozen prefix and the real centre is keyed by it, never by a path."""
        if self._backbone_key is None:
            self._backbone_key = module_key(self.base.vae, self.base.image_encoder, self.base.unet)
        return self._backbone_key

    # -- parameters
    def trainable(self) -> dict:
        return {"suffix": self.suffix, "cls": self.cls}

    def param_groups(self) -> list[dict]:
        """Differential learning rates (paper: 1e-5 decoder, 5e-6 encoder and UNet)."""
        c, s = self.cfg, self.suffix
        groups = [{"params": list(self.cls.parameters()), "lr": c.lr_cls}]
        for module, on, lr in ((s.encoder, c.train_encoder, c.lr_encoder), (s.unet, c.train_unet, c.lr_unet),
                               (s.vae, c.train_decoder, c.lr_decoder)):
            params = [p for p in module.parameters() if p.requires_grad]
            if on and params:
                groups.append({"params": params, "lr": lr})
        return groups

    # -- the frozen prefix
    def tau(self, z: torch.Tensor) -> float:
        return self.cfg.tau_scale * math.sqrt(z[0].numel())

    @torch.no_grad()
    def invert(self, x: torch.Tensor, fast: bool = False) -> torch.Tensor:
        """z_T (full: n inversion steps) or z at the suffix's start level (fast: k steps)."""
        cond = self.base.image_embeddings(x)
        steps = self.cfg.k if fast else self.cfg.n_steps
        return ddim_invert(self.base.unet, self.inverse, encode_latent(self.base.vae, x), cond, steps,
                           self.cfg.n_steps)

    @torch.no_grad()
    def prefix(self, x: torch.Tensor, fast: bool = False) -> torch.Tensor:
        """The latent entering the first trainable step: invert, perturb, run the frozen sampling steps.

        Fast mode inverts only k steps, perturbs there (with the centre of that level) and skips the frozen
        sampling steps: the suffix then runs the last k steps as usual.
        """
        z = self.invert(x, fast)
        if self.cfg.perturb:
            if self.mu is None:
                raise RuntimeError("mu_real is not set: call fit_center() on real training images first")
            mu = self.mu_fast if fast else self.mu
            z = perturb_latent(z, mu.to(z), self.cfg.lam, self.tau(z))
        frozen = self.timesteps[self.cfg.n_steps - self.cfg.k if fast else 0: self.frozen_steps]
        if len(frozen):
            z = ddim_steps(self.base.unet, self.scheduler, z, self.base.image_embeddings(x), frozen)
        return z

    @torch.no_grad()
    def fit_center(self, real_x: torch.Tensor, batch_size: int = 64, progress: bool = False,
                   cache_dir=None) -> torch.Tensor:
        """mu_real (eq. 2) from the inverted latents of real training images (full and fast-mode levels); with
        `cache_dir`, kept in a file keyed by the backbone's content, the steps and the images (variants and seeds
        share it)."""
        def compute():
            full, fast = [], []
            for b in tqdm(real_x.split(batch_size), desc="real centre", disable=not progress):
                full.append(self.invert(b))
                fast.append(self.invert(b, fast=True))
            return {"mu": mean_center(torch.cat(full)), "mu_fast": mean_center(torch.cat(fast))}
        c = self.cfg
        key = config_hash("mean", self.backbone_key, c.n_steps, c.k, array_key(real_x))
        t = cached_tensors(cache_dir and Path(cache_dir) / f"craft-centre-{key}.safetensors", compute)
        self.mu, self.mu_fast = t["mu"], t["mu_fast"]
        return self.mu

    # -- training objective
    def margins(self) -> tuple[float, float]:
        """(m, delta) of eq. 6 in units of d: the config's values, times the median frozen distance of the training
        reals when `cfg.margin_unit == "real-median"` (margins set from the measured scale of d, not constants)."""
        c = self.cfg
        if c.margin_unit == "absolute":
            return c.m, c.delta
        if self.d_ref is None:
            raise RuntimeError("relative CR margins need the frozen distances: call start_from_frozen() first")
        return c.m * self.d_ref, c.delta * self.d_ref

    @torch.no_grad()
    def frozen_distances(self, x: torch.Tensor, z: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """d(x, x_hat) of the suffix as it is now (before fine-tuning: the frozen pipeline's), from cached z_k."""
        return torch.cat([self.distance(xb, self.suffix(zb, xb)) for xb, zb in
                          zip(x.split(batch_size), z.split(batch_size))])

    @torch.no_grad()
    def start_from_frozen(self, d: torch.Tensor, y: torch.Tensor) -> None:
        """Before fine-tuning, from the frozen pipeline's distances of the training rows: the margins' unit d_ref
        (the reals' median d) and the classifier's warm start."""
        self.d_ref = float(d[y == 0].median())
        self.cls.warm_start(d, y)

    def loss(self, mods: dict, x: torch.Tensor, z_k: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """L_total (eq. 9) with L_CR (eq. 6), or the L1/L2 reconstruction losses of Table 2."""
        x_hat = mods.get("suffix", self.suffix)(z_k, x)
        d = self.distance(x, x_hat)
        c = self.cfg
        if c.loss == "cr":
            m, delta = self.margins()
            l_rec = craft_cr_loss(d, y, m, delta, c.gamma)
        elif c.loss in ("l1", "l2"):
            diff = (x - x_hat).abs() if c.loss == "l1" else (x - x_hat) ** 2
            l_rec = craft_recon_loss(diff.flatten(1).mean(1))
        else:
            raise ValueError(f"unknown CRAFT loss {c.loss!r}")
        logits = mods.get("cls", self.cls)(d)
        return craft_total_loss(l_rec, craft_ce_loss(logits, y), c.lambda_cls)

    # -- inference
    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, fast: bool = False) -> torch.Tensor:
        return self.suffix(self.prefix(x, fast), x)

    @torch.no_grad()
    def score(self, x: torch.Tensor, fast: bool = False, batch_size: int = 64, progress: bool = False,
              z: torch.Tensor | None = None) -> CraftScores:
        """Per image: P(fake) from the classifier and the reconstruction distance (`z`: the images' prefix
        latents when already computed, see `prefix_cache`)."""
        probs, dists = [], []
        zs = z.split(batch_size) if z is not None else [None] * len(x.split(batch_size))
        for b, zb in zip(tqdm(x.split(batch_size), desc="CRAFT score", disable=not progress), zs):
            x_hat = self.reconstruct(b, fast) if zb is None else self.suffix(zb, b)
            d = self.distance(b, x_hat)
            probs.append(self.cls.logit(d.double()).sigmoid())   # float64: no ties where float32 would round
            dists.append(d)
        return CraftScores(torch.cat(probs).numpy(), torch.cat(dists).numpy())

    def eval(self):
        self.suffix.eval()
        self.cls.eval()
        return self

    # -- persistence
    def tuned_modules(self) -> dict:
        """The suffix modules this config fine-tunes, by name (encoder, unet, vae)."""
        s, c = self.suffix, self.cfg
        return {name: m for name, m, on in (("encoder", s.encoder, c.train_encoder), ("unet", s.unet, c.train_unet),
                                            ("vae", s.vae, c.train_decoder)) if on}

    def save(self, folder, extra: dict | None = None) -> Path:
        """The fine-tuned weights only (the trained modules; of the VAE, its decoder side) + classifier + centre +
        threshold, in `craft.safetensors`; the base backbone is referenced by path and by its content key (the
        untrained modules are its own), the distance by the name it resolved to."""
        from safetensors.torch import save_file
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.base_path is None:
            raise ValueError("save() needs the base backbone's path: build the model with Craft.from_backbone(path)")
        tensors = {f"cls.{k}": v.contiguous() for k, v in self.cls.state_dict().items()}
        tensors.update({f"{name}.{k}": v.contiguous() for name, module in self.tuned_modules().items()
                        for k, v in module.state_dict().items() if name != "vae" or k.startswith(DECODER_PARTS)})
        if self.mu is not None:
            tensors.update(mu_real=self.mu.contiguous(), mu_real_fast=self.mu_fast.contiguous())
        save_file(tensors, str(folder / "craft.safetensors"))
        meta = {"config": asdict(self.cfg), "threshold": self.threshold, "base": str(self.base_path),
                "base_key": self.backbone_key, "distance": distance_label(self.distance), "d_ref": self.d_ref,
                **(extra or {})}
        atomic_write_json(folder / "craft.json", meta)
        return folder

    @classmethod
    def load(cls, folder) -> "Craft":
        """A saved checkpoint; refuses (DataError) when the distance resolves to another network here than the one
        the classifier was trained on, or when the base backbone's content changed since training."""
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = checkpoint_meta(folder, "craft.json", "CRAFT")
        cfg = CraftConfig(**meta["config"])
        here = resolved_name(cfg.distance)
        if meta["distance"] != here:
            raise DataError(folder, f"trained with the distance {meta['distance']!r}, but {cfg.distance!r} resolves to "
                                    f"{here!r} on this machine (ImageNet LPIPS weights present or absent in the torch "
                                    f"hub cache); its classifier would read a different scale: refusing to score")
        if meta.get("base_key") and content_key(meta["base"]) != meta["base_key"]:
            raise DataError(folder, f"its base backbone {meta['base']} changed since training (content key "
                                    f"{content_key(meta['base'])}, trained on {meta['base_key']}): retrain")
        model = cls.from_backbone(meta["base"], cfg)
        t = load_file(str(folder / "craft.safetensors"))
        for name, module in model.tuned_modules().items():   # copies of the base: load what fine-tuning changed
            module.load_state_dict({k[len(name) + 1:]: v for k, v in t.items() if k.startswith(f"{name}.")},
                                   strict=name != "vae")   # of the VAE only its decoder side was saved
        model.cls.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("cls.")})
        model.mu, model.mu_fast = t.get("mu_real"), t.get("mu_real_fast")
        model.threshold, model.d_ref = meta["threshold"], meta.get("d_ref")
        model.threshold_fast = meta.get("threshold_fast", meta["threshold"])
        return model.eval()

    @classmethod
    def from_backbone(cls, path, cfg: CraftConfig) -> "Craft":
        """Load the base StableDiffusionImageVariationPipeline folder (stand-in or real) and wrap it."""
        model = cls(load_image_variation(path), cfg)
        model.base_path = Path(path).resolve()
        model._backbone_key = content_key(model.base_path)
        return model


DECODER_PARTS = ("decoder.", "post_quant_conv.")   # the VAE parameters CRAFT's decoder fine-tuning trains


def cache_dir(run_dir) -> Path:
    """Where a run keeps CRAFT's real centres and frozen-prefix latents."""
    return Path(run_dir) / "artifacts" / "craft-cache"


# ------------------------------------------------------------------ training and calibration

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


def prefix_key(model: Craft, fast: bool = False) -> dict:
    """Everything the frozen prefix depends on besides the images (the real centre by its bytes)."""
    c = model.cfg
    mu = (model.mu_fast if fast else model.mu) if c.perturb else None
    return {"backbone": model.backbone_key, "n_steps": c.n_steps, "frozen_steps": model.frozen_steps,
            "fast_k": c.k if fast else None, "perturb": c.perturb, "lam": c.lam if c.perturb else None,
            "tau_scale": c.tau_scale if c.perturb else None, "mu": None if mu is None else array_key(mu)}


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


TRAIN_PROBE_PER_CLASS = 32   # training images per class on which the learning curve is drawn beside validation


def train_probe(x: torch.Tensor, z: torch.Tensor, y: torch.Tensor):
    """A fixed class-balanced subset (x, z_k, y) of the training rows (the first of each class), for the curve."""
    keep = torch.cat([torch.nonzero(y == c).flatten()[:TRAIN_PROBE_PER_CLASS] for c in (0, 1)])
    return x[keep], z[keep], y[keep]


def train(model: Craft, x: torch.Tensor, y: torch.Tensor, *, seed: int, out_dir=None, cache: bool = True,
          cache_dir=None, progress: bool = True, accelerator=None, val=None) -> list[dict]:
    """Fine-tune the suffix and the classifier with `udet_core.train.fit` (accelerate, checkpoints, resume).

    Before the first step, the frozen pipeline's distances of the training rows set the CR margins' unit and the
    classifier's warm start (`Craft.start_from_frozen`). With `cache=False` the frozen prefix is recomputed for
    every batch (the slow path the cache replaces). With `cache_dir`, the prefix cache is read from / written to a
    file there (`prefix_cache`). With `val` = (x, y) and `cfg.eval_every`, training is selected on the validation
    AUC from step 0 on (`EarlyStopping`; a resumed run restarts the search from the checkpoint's step).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    acc = accelerator or Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    z = prefix_cache(model, x, model.cfg.eval_batch_size, progress=progress and acc.is_local_main_process,
                     cache_dir=cache_dir)
    model.start_from_frozen(model.frozen_distances(x, z, model.cfg.eval_batch_size), y)
    probe = train_probe(x, z, y)
    keep = balanced(y)
    x, y, z = x[keep], y[keep], z[keep]
    if cache:
        data = (x, z, y)

        def loss(mods, batch):
            return model.loss(mods, batch[0], batch[1], batch[2])
    else:
        data = (x, y)

        def loss(mods, batch):
            return model.loss(mods, batch[0], model.prefix(batch[0]), batch[1])

    return fine_tune(model, data, loss, seed=seed, out_dir=out_dir, progress=progress, accelerator=acc, val=val,
                     cache_dir=cache_dir, probe=probe)


def fine_tune(model: Craft, data, loss, *, seed: int, out_dir, progress: bool, accelerator, val, cache_dir,
              rows=None, transform=None, workers: int = 0, probe=None) -> list[dict]:
    """The fine-tuning loop of the suffix and the classifier (`train.fit`) on `data` (tensors or a data set of
    examples `loss` reads), selected on `val` = (x, y) from step 0 on and restored to its best check. The history
    starts with the step-0 check (the frozen pipeline; no loss) when there is a validation split."""
    stopper = EarlyStopping(model, *val, cache_dir=cache_dir, train_probe=probe) \
        if val is not None and model.cfg.eval_every else None
    start = [{"step": 0, **stopper(0)}] if stopper is not None else []   # before fit: the frozen weights
    # with no backbone module to fine-tune (Table 2's baseline and 'perturbation only') the classifier warm-started on
    # the frozen distances is the whole detector: more steps of CE cannot change its ranking, only its calibration,
    # which the validation threshold sets anyway
    steps = model.cfg.steps if model.tuned_modules() else 0
    history = fit(model.trainable(), [Objective("craft_loss", loss, model.param_groups(), lr=model.cfg.lr_cls)], data,
                  steps=steps, batch_size=model.cfg.batch_size, seed=seed, out_dir=out_dir,
                  checkpoint_every=max(25, model.cfg.steps // 4), desc="CRAFT fine-tune", progress=progress,
                  accelerator=accelerator, after_step=stopper, rows=rows, transform=transform, num_workers=workers)
    if stopper is not None and stopper.best is not None:
        stopper.restore()
    return start + history


def fit_craft_streamed(model: Craft, train, *, seed: int, out_dir, cache_dir, progress: bool = True,
                       accelerator=None, val=None, workers: int = 0) -> tuple[list[dict], list]:
    """`fit_craft` on a data set read from disk (`data.dataset.ImageDataset`) without ever holding its images: the
    real centre and the frozen-prefix latent of every training image are computed batch by batch through
    DataLoader workers (each batch cached by its content, so a rerun or another seed reuses them), then the suffix
    trains on images read back by the workers beside their cached latents. Held in memory: the latents (4 channels
    at 1/8 of the side, 1/48 of the float pixels) and the validation split (`val` = (uint8 images, labels)).
    Returns (history, [(path, problem)] of the files that could not be read)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    acc = accelerator or Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    c, show = model.cfg, progress and acc.is_local_main_process
    labels = torch.tensor(train.manifest["label"].to_numpy())
    problems, sums, n_real = [], {"mu": 0.0, "mu_fast": 0.0}, 0
    for b in tqdm(train.loader(c.eval_batch_size, workers, rows=np.flatnonzero(labels.numpy() == 0)),
                  desc="real centre", disable=not show):
        problems += b.problems
        x = to_tensor(b.images.numpy())
        key = config_hash("sum", model.backbone_key, c.n_steps, c.k, array_key(x))
        t = cached_tensors(cache_dir and Path(cache_dir) / f"craft-centre-sum-{key}.safetensors",
                           lambda: {"mu": model.invert(x).sum(0), "mu_fast": model.invert(x, fast=True).sum(0)})
        sums = {k: sums[k] + t[k] for k in sums}
        n_real += len(x)
    if not n_real:
        raise ValueError("no real training image could be read: CRAFT's real centre needs some")
    model.mu, model.mu_fast = sums["mu"] / n_real, sums["mu_fast"] / n_real   # mean_center (eq. 2), batch by batch
    z, ok, d = None, torch.zeros(len(train), dtype=torch.bool), torch.zeros(len(train))
    in_probe = set(torch.cat([torch.nonzero(labels == k).flatten()[:TRAIN_PROBE_PER_CLASS] for k in (0, 1)]).tolist())
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
    rows = torch.nonzero(ok).flatten()
    model.start_from_frozen(d[rows], labels[rows])
    order = sorted(probe, key=lambda i: (int(labels[i]), i))
    probe = (torch.stack([probe[i][0] for i in order]), torch.stack([probe[i][1] for i in order]), labels[order])
    rows = rows[balanced(labels[rows])].numpy()
    val_t = None if val is None else (to_tensor(val[0]), torch.tensor(np.asarray(val[1])))
    history = fine_tune(model, RowExamples(train, z, labels), lambda mods, batch: model.loss(mods, *batch),
                        seed=seed, out_dir=out_dir, progress=progress, accelerator=acc, val=val_t,
                        cache_dir=cache_dir, rows=rows, transform=pixels, workers=workers, probe=probe)
    return history, sorted(set(problems))


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


# ------------------------------------------------------------------ experiment and detection

FAST_MODE = ("CRAFT-fast (a different detector: k inversion steps, perturbed at that level, then the suffix trained "
             "on full-mode inputs)")


def split_tensors(images: np.ndarray, df, split: str):
    """(x in [-1, 1], labels) of one split of a loaded manifest."""
    mask = (df["split"] == split).to_numpy()
    return to_tensor(images[mask]), torch.tensor(df["label"].to_numpy()[mask])


def fit_craft(model: Craft, images: np.ndarray, df, *, seed: int, out_dir, cache_dir, timer=None,
              progress: bool = True, accelerator=None, val=None) -> list[dict]:
    """Fit the real centre on the real rows, then fine-tune on all rows (uint8 images + their manifest rows);
    `val` = (uint8 images, labels) of the validation rows for early stopping.

    The real centre and the frozen-prefix cache are kept in `cache_dir` (keyed by what they depend on), so seeds
    and variants that agree on them share them.
    """
    timer = timer or Timer()
    x, y = to_tensor(images), torch.tensor(df["label"].to_numpy())
    main = accelerator is None or accelerator.is_main_process
    with timer("real_centre"):
        model.fit_center(x[y == 0], model.cfg.eval_batch_size, progress=progress and main, cache_dir=cache_dir)
    with timer("train"):
        val_t = None if val is None else (to_tensor(val[0]), torch.tensor(np.asarray(val[1])))
        return train(model, x, y, seed=seed, out_dir=out_dir, cache_dir=cache_dir, progress=progress,
                     accelerator=accelerator, val=val_t)


# ------------------------------------------------------------------ analysis (paper §4.2, notebook 05)

def with_settings(model: Craft, lam: float | None = None, k: int | None = None) -> Craft:
    """A view of `model` sharing its weights, with another perturbation strength or fine-tuned segment length
    (the fine-tuned UNet/encoder then run the last `k` steps). For exploration, not for reported results."""
    view = copy.copy(model)
    view.cfg = replace(model.cfg, lam=model.cfg.lam if lam is None else lam, k=model.cfg.k if k is None else k)
    c = view.cfg
    view.frozen_steps = c.n_steps - c.k if (c.train_encoder or c.train_unet) else c.n_steps
    view.suffix = copy.copy(model.suffix)
    view.suffix.timesteps = model.timesteps[view.frozen_steps:]
    return view


def ddim_step_spectral_norm(unet, scheduler, t, cond, z: torch.Tensor, iters: int = 8) -> torch.Tensor:
    """||J_t||_2 of one DDIM update g_t(z) (paper eq. 12) per sample, by power iteration on J^T J (JVP + VJP)."""
    from torch.func import jvp, vjp

    def g(z_):
        return scheduler.step(unet(z_, t, encoder_hidden_states=cond).sample, t, z_).prev_sample

    from torch.nn.attention import SDPBackend, sdpa_kernel
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(z.shape, generator=gen)
    v = v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    sigma = torch.zeros(len(z))
    with sdpa_kernel([SDPBackend.MATH]):  # the fused CPU attention kernels have no forward-mode AD
        _, pullback = vjp(g, z)
        for _ in range(iters):
            _, jv = jvp(g, (z,), (v,))
            (w,) = pullback(jv)
            sigma = w.flatten(1).norm(dim=1).sqrt()      # ||J^T J v|| -> sigma_max^2
            v = w / w.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return sigma.detach()


def trajectory_jacobian_norms(model: Craft, x: torch.Tensor, iters: int = 8, progress: bool = False) -> np.ndarray:
    """Spectral norm of every DDIM sampling step's Jacobian along each image's reconstruction trajectory,
    (n_steps, N): frozen steps use the base UNet, the last k the fine-tuned one (paper §4.2, never measured there)."""
    with torch.no_grad():
        z = model.invert(x)
        if model.cfg.perturb:
            z = perturb_latent(z, model.mu.to(z), model.cfg.lam, model.tau(z))
        cond_base = model.base.image_embeddings(x)
        cond_tuned = model.suffix.encoder(model.base.clip_pixels(x)).image_embeds.unsqueeze(1)
    norms = []
    for i, t in enumerate(tqdm(model.timesteps, desc="step Jacobians", disable=not progress)):
        tuned = i >= model.frozen_steps
        unet, cond = (model.suffix.unet, cond_tuned) if tuned else (model.base.unet, cond_base)
        norms.append(ddim_step_spectral_norm(unet, model.scheduler, t, cond, z, iters).numpy())
        with torch.no_grad():
            z = ddim_steps(unet, model.scheduler, z, cond, [t])
    return np.stack(norms)


@torch.no_grad()
def latent_center_distance(model: Craft, x: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """||z_T - mu_real|| per image: the premise of paper §3.2 / §4.1 that forged latents lie farther from mu_real."""
    return np.concatenate([(model.invert(b) - model.mu).flatten(1).norm(dim=1).numpy() for b in x.split(batch_size)])


# ------------------------------------------------------------------ ablations (notebook 04)


# ------------------------------------------------------------------ registry entry

@register("craft")
class CraftDetector(Detector):
    """CRAFT in the common protocol: fine-tuned on the given rows; full-mode P(fake) as the score. The saved
    folder is a complete CRAFT checkpoint (full- and fast-mode thresholds), usable by `detect`."""

    takes_backbone = "a StableDiffusionImageVariationPipeline folder"
    weights_needed = ("image_variation",)

    def __init__(self, p, run_dir, backbone=None, weights=None):
        super().__init__(p, run_dir, backbone, weights)
        self.cfg, self.model, self.fast = p.craft, None, False

    def config(self):
        return {"craft": asdict(self.cfg), "distance": resolved_name(self.cfg.distance),
                "backbone": content_key(self.single_backbone())}

    def fit(self, train, *, seed, out_dir, progress=False, val=None, workers=0):
        torch.manual_seed(seed)
        self.model = Craft.from_backbone(self.single_backbone(), self.cfg)
        val_images, val_df, problems = val.load(progress=progress, num_workers=workers)   # held for early stopping
        val = (val_images, val_df["label"].to_numpy())
        if isinstance(train, ArrayDataset):   # in memory (the notebooks): one prefix cache per array
            self.history = fit_craft(self.model, train.images, train.manifest, seed=seed, out_dir=out_dir,
                                     cache_dir=cache_dir(self.run_dir), progress=progress, val=val)
        else:
            self.history, bad = fit_craft_streamed(self.model, train, seed=seed, out_dir=out_dir, progress=progress,
                                                   cache_dir=cache_dir(self.run_dir), val=val, workers=workers)
            problems += bad
        self.bad_files += [{"path": str(path), "problem": why} for path, why in problems]
        self.model.eval()
        info = selection_info(self.history)
        self.chosen_step = info["chosen_step"]
        return info

    def _scores(self, images, fast=False, progress=False) -> CraftScores:
        """P(fake) and the distance d; the frozen prefix of these images is cached (shared by seeds and by variants
        that agree on it)."""
        x = to_tensor(images)   # at the input size the data set's resolution policy gave them
        z = prefix_cache(self.model, x, self.cfg.eval_batch_size, fast, progress,
                         cache_dir=cache_dir(self.run_dir) if self.use_cache else None)
        return self.model.score(x, fast, self.cfg.eval_batch_size, progress, z=z)

    def raw_signal(self, images, *, progress=False):
        """The reconstruction distance d that P(fake) is a monotone function of (`DistanceClassifier`)."""
        return self._scores(images, fast=self.fast, progress=progress).distance

    def score(self, images, *, progress=False):
        """P(fake) of full-mode CRAFT (with `fast`: CRAFT-fast, a different detector with its own threshold)."""
        return self._scores(images, fast=self.fast, progress=progress).p_fake

    def fast_variant(self) -> "CraftDetector":
        """CRAFT-fast (`FAST_MODE`), a different detector sharing this one's weights: scores in fast mode, at its own
        validation threshold. A new object; this detector is left as it is."""
        fast = copy.copy(self)
        fast.fast, fast.threshold = True, self.threshold_fast
        return fast

    def calibrate(self, val, *, progress=False, workers=0):
        super().calibrate(val, progress=progress, workers=workers)
        self.fast = True
        try:
            fast, labels = self.validation_scores(val, progress=progress, workers=workers)
        finally:
            self.fast = False
        self.model.threshold, self.threshold_fast = self.threshold, calibrate_threshold(fast, labels)

    def save(self, folder):
        self.model.save(folder, {"threshold_fast": self.threshold_fast, "history": self.history})

    @classmethod
    def load(cls, folder, p, run_dir):
        import json
        det = cls(p, run_dir)
        det.model = Craft.load(folder)
        det.cfg, det.threshold_fast = det.model.cfg, det.model.threshold_fast
        det.history = json.loads((Path(folder) / "craft.json").read_text()).get("history", [])
        det.chosen_step = selection_info(det.history)["chosen_step"]
        return det
