"""The trainers of the models behind udet-mini and the zoo (AutoencoderKL, the SD Image Variation stand-in, the
pixel DDPM, the DCGAN, the feature net), each one `engine.train.fit` run on crops of the bundled photographs."""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from udet_core.core.profiles import Profile
from udet_core.data.images import to_tensor
from udet_core.data.sources import PHOTOS, random_crops
from udet_core.engine.train import Objective, fit
from udet_core.models.backbones import (
    build_ddim,
    build_image_variation,
    build_pixel_unet,
    build_vae,
)
from udet_core.models.featnet import FeatureNet
from udet_core.models.gan import Discriminator, Generator


def train_featnet(resolution: int, steps: int, seed: int = 0, n_crops: int = 4096, out_dir=None,
                  progress: bool = False, feature_dim: int = 32) -> tuple[FeatureNet, list[dict]]:
    """Train the feature network on random multi-scale crops of every bundled photograph (source classification)."""
    import torch.nn.functional as F

    names = sorted(PHOTOS)
    crops, meta = random_crops(names, n_crops, resolution, (0.12, 0.25, 0.5, 1.0), np.random.default_rng([seed, 7]))
    y = torch.tensor([names.index(m["source"]) for m in meta])
    torch.manual_seed(seed)
    net = FeatureNet(len(names), feature_dim=feature_dim)
    obj = Objective("featnet", lambda m, b: F.cross_entropy(m["net"](b[0]), b[1]), [{"params": net.parameters()}],
                    lr=2e-3)
    history = fit({"net": net}, [obj], (to_tensor(crops), y), steps=steps, batch_size=64, seed=seed, out_dir=out_dir,
                  checkpoint_every=100, desc="feature net", progress=progress)
    return net.eval(), history




def stream_rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def generator_pool(p: Profile) -> torch.Tensor:
    """Train-split real crops (a larger pool than the manifest's) on which every generator is trained."""
    n = p.data.generator_pool
    crops, _ = random_crops(p.data.split_photos["train"], n, p.data.resolution, p.data.crop_scales, stream_rng(p.seed, 99))
    return to_tensor(crops)


def checkpoint_every(steps: int) -> int:
    """Checkpoint a generator's training four times, at most every 250 steps (hours-long pretraining loses little)."""
    return min(250, max(50, steps // 4))


class VAEWithKL(nn.Module):
    """AutoencoderKL forward that also returns the KL term (so DDP sees one forward call)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x):
        post = self.vae.encode(x).latent_dist
        return self.vae.decode(post.sample()).sample, post.kl().mean()


def vae_loss(m: dict, x: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """The AutoencoderKL objective: L1 + L2 reconstruction + `kl_weight` x KL (`m["vae"]` is a `VAEWithKL`)."""
    rec, kl = m["vae"](x)
    return F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_weight * kl


def train_vae(p: Profile, pool: torch.Tensor, out_dir, progress=True):
    """AutoencoderKL: L1 + L2 reconstruction + a small KL; sets the latent scaling factor to 1/std."""
    cfg = p.vae
    torch.manual_seed(p.seed)
    vae = build_vae(cfg, p.data.resolution)
    wrapped = VAEWithKL(vae)
    loss = functools.partial(vae_loss, kl_weight=cfg.kl_weight)
    hist = fit({"vae": wrapped}, [Objective("vae", loss, [{"params": vae.parameters()}], lr=cfg.lr)], pool,
               steps=cfg.steps, batch_size=cfg.batch_size, seed=p.seed, out_dir=out_dir,
               checkpoint_every=checkpoint_every(cfg.steps), desc="train AutoencoderKL", progress=progress)
    with torch.no_grad():
        z = torch.cat([vae.encode(b).latent_dist.mode() for b in pool.split(256)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return vae, hist


def train_image_variation(p: Profile, vae, pool: torch.Tensor, out_dir, progress=True):
    """Image-variation objective: denoise the latent of x conditioned on CLIP(x); encoder trained jointly."""
    cfg = p.sdiv
    torch.manual_seed(p.seed + 1)
    iv = build_image_variation(cfg, vae, p.data.resolution)
    with torch.no_grad():
        latents = torch.cat([vae.encode(b).latent_dist.mode() for b in pool.split(256)]) * iv.latent_scale
    sched = iv.scheduler

    def loss(m, batch):
        z0, x = batch
        noise = torch.randn_like(z0)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(z0),), device=z0.device)
        emb = m["image_encoder"](iv.clip_pixels(x)).image_embeds.unsqueeze(1)
        pred = m["unet"](sched.add_noise(z0, noise, t), t, encoder_hidden_states=emb).sample
        return F.mse_loss(pred, noise)

    params = [{"params": iv.unet.parameters()}, {"params": iv.image_encoder.parameters()}]
    hist = fit({"unet": iv.unet, "image_encoder": iv.image_encoder}, [Objective("eps_mse", loss, params, lr=cfg.lr)],
               (latents, pool), steps=cfg.steps, batch_size=cfg.batch_size, seed=p.seed + 1, out_dir=out_dir,
               checkpoint_every=checkpoint_every(cfg.steps), desc="train SD image-variation UNet", progress=progress)
    return iv, hist


def train_pixel_ddpm(p: Profile, pool: torch.Tensor, out_dir, progress=True):
    """Pixel-space DDPM with the epsilon objective (Ho et al. 2020)."""
    cfg = p.pixel
    torch.manual_seed(p.seed + 2)
    unet = build_pixel_unet(cfg, p.data.resolution)
    sched = build_ddim(cfg.num_train_timesteps, latent=False)

    def loss(m, x):
        noise = torch.randn_like(x)
        t = torch.randint(0, cfg.num_train_timesteps, (len(x),), device=x.device)
        return F.mse_loss(m["unet"](sched.add_noise(x, noise, t), t).sample, noise)

    hist = fit({"unet": unet}, [Objective("eps_mse", loss, [{"params": unet.parameters()}], lr=cfg.lr)], pool,
               steps=cfg.steps, batch_size=cfg.batch_size, seed=p.seed + 2, out_dir=out_dir,
               checkpoint_every=checkpoint_every(cfg.steps), desc="train pixel DDPM", progress=progress)
    return unet, sched, hist


def train_gan(p: Profile, pool: torch.Tensor, out_dir, progress=True):
    """DCGAN with the non-saturating loss."""
    cfg = p.gan
    torch.manual_seed(p.seed + 3)
    G, D = Generator(cfg.nz, cfg.ngf, p.data.resolution), Discriminator(cfg.ndf, p.data.resolution)

    def d_loss(m, x):
        with torch.no_grad():
            fake = m["G"](torch.randn(len(x), cfg.nz, device=x.device))
        return F.softplus(-m["D"](x)).mean() + F.softplus(m["D"](fake)).mean()

    def g_loss(m, x):
        return F.softplus(-m["D"](m["G"](torch.randn(len(x), cfg.nz, device=x.device)))).mean()

    objectives = [Objective("d_loss", d_loss, [{"params": D.parameters()}], lr=cfg.lr, max_grad_norm=None),
                  Objective("g_loss", g_loss, [{"params": G.parameters()}], lr=cfg.lr, max_grad_norm=None)]
    for o in objectives:
        o.params[0]["betas"] = (0.5, 0.999)
    hist = fit({"G": G, "D": D}, objectives, pool, steps=cfg.steps, batch_size=cfg.batch_size, seed=p.seed + 3,
               out_dir=out_dir, checkpoint_every=checkpoint_every(cfg.steps), desc="train DCGAN", progress=progress)
    return G, hist
