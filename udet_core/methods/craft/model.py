"""CRAFT's model: contrastive reconstruction with class-guided latent perturbation, fine-tuning the last k DDIM steps.

Pipeline for an image x (DESIGN §4, paper §3-4):
  z0 = VAE-encode(x)                                 (frozen)
  z_T = DDIM-invert(z0, n steps)                     (frozen base UNet + image encoder)
  mu_real = mean of the real training images' z_T                           eq. 2
  z' = z_T + lam (z_T - mu_real)/(||.|| + eps), ||z'|| <= tau          eq. 4, 10, 11
  z_k = first n-k DDIM sampling steps from z'        (frozen: the *prefix*)
  x_hat = decode(last k DDIM steps from z_k)         (trainable encoder / UNet / decoder: the *suffix*)
Because the prefix is frozen, z_k depends only on the image: it is computed once and cached (`train.prefix_cache`).
Detection: a classifier on the scalar distance d(x, x_hat) gives P(fake) (eq. 7-9); the threshold is calibrated on
the validation split and stored with the checkpoint. Training: `methods.craft.train`; the registry entry:
`methods.craft.detector`; the analyses of paper §4.2: `methods.craft.analysis`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from udet_core.core.errors import DataError
from udet_core.core.io import atomic_write_json, checkpoint_meta
from udet_core.core.keys import array_key, cached_tensors, content_key, module_key
from udet_core.core.profiles import CraftConfig, config_hash
from udet_core.core.progress import tqdm
from udet_core.data.images import to_tensor
from udet_core.engine.distances import distance_label, make_distance, resolved_name
from udet_core.engine.losses import (
    craft_ce_loss,
    craft_cr_loss,
    craft_recon_loss,
    craft_total_loss,
)
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


def frozen_steps(cfg: CraftConfig) -> int:
    """The sampling steps before the first trainable one, frozen and cacheable: n - k when the encoder or UNet trains
    (they run the last k); all n when only the decoder trains (the cache then holds z_0 and training only decodes)."""
    return cfg.n_steps - cfg.k if (cfg.train_encoder or cfg.train_unet) else cfg.n_steps


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
        self.frozen_steps = frozen_steps(cfg)
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
    @torch.no_grad()
    def inverted_latents(self, x: torch.Tensor, cache_dir=None) -> dict:
        """z_T (n inversion steps) and the fast-mode level's latent (k steps) of a batch of images, the terms of
        mu_real (eq. 2); with `cache_dir`, kept in a file keyed by the backbone's content, the steps and the images
        (variants and seeds share it)."""
        c = self.cfg
        key = config_hash("inverted", self.backbone_key, c.n_steps, c.k, array_key(x))
        return cached_tensors(cache_dir and Path(cache_dir) / f"craft-inverted-{key}.safetensors",
                              lambda: {"z_T": self.invert(x), "z_fast": self.invert(x, fast=True)})

    def set_center(self, latents: list[dict]) -> torch.Tensor:
        """mu_real (eq. 2) and the fast-mode level's centre from the `inverted_latents` of the real training images."""
        self.mu = mean_center(torch.cat([t["z_T"] for t in latents]))
        self.mu_fast = mean_center(torch.cat([t["z_fast"] for t in latents]))
        return self.mu

    def fit_center(self, real_x: torch.Tensor, batch_size: int = 64, progress: bool = False,
                   cache_dir=None) -> torch.Tensor:
        """mu_real (eq. 2) of real training images held in memory, inverted `batch_size` at a time."""
        return self.set_center([self.inverted_latents(b, cache_dir) for b in
                                tqdm(real_x.split(batch_size), desc="real centre", disable=not progress)])

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


FAST_MODE = ("CRAFT-fast (a different detector: k inversion steps, perturbed at that level, then the suffix trained "
             "on full-mode inputs)")
DECODER_PARTS = ("decoder.", "post_quant_conv.")   # the VAE parameters CRAFT's decoder fine-tuning trains



def split_tensors(images: np.ndarray, df, split: str):
    """(x in [-1, 1], labels) of one split of a loaded manifest."""
    mask = (df["split"] == split).to_numpy()
    return to_tensor(images[mask]), torch.tensor(df["label"].to_numpy()[mask])
