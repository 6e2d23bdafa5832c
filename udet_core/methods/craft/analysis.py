"""The analyses of CRAFT's paper §4.2 (notebook 05): views of a fitted model with other settings, the spectral norms of
the DDIM steps' Jacobians along the reconstruction trajectory, and the premise's latent-to-centre distance."""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch

from udet_core.core.progress import tqdm
from udet_core.methods.craft.model import Craft, frozen_steps, perturb_latent
from udet_core.models.sampling import ddim_steps


def with_settings(model: Craft, lam: float | None = None, k: int | None = None) -> Craft:
    """A view of `model` sharing its weights, with another perturbation strength or fine-tuned segment length
    (the fine-tuned UNet/encoder then run the last `k` steps). For exploration, not for reported results."""
    view = copy.copy(model)
    view.cfg = replace(model.cfg, lam=model.cfg.lam if lam is None else lam, k=model.cfg.k if k is None else k)
    view.frozen_steps = frozen_steps(view.cfg)
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
