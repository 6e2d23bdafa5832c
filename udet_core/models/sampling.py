"""DDIM sampling, inversion and reconstruction on diffusers schedulers and models (shared by the fake families,
CRAFT, DIRE, AEROBLADE and the backbone-fidelity table)."""
from __future__ import annotations

import torch


def seeded_noise(shape, seeds, device="cpu") -> torch.Tensor:
    """One Gaussian draw per seed, so every generated image is reproducible from its own seed."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)


@torch.no_grad()
def ddim_sample(eps_fn, scheduler, noise: torch.Tensor, steps: int, start: torch.Tensor | None = None,
                strength: float = 1.0) -> torch.Tensor:
    """Deterministic DDIM (eta=0) from `noise`; with `start`, SDEdit: re-noise `start` to `strength` and denoise.

    `eps_fn(x_t, t)` predicts the noise. Returns x_0.
    """
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    if start is not None:
        skip = min(len(timesteps) - 1, int(round(len(timesteps) * (1.0 - strength))))
        timesteps = timesteps[skip:]
        x = scheduler.add_noise(start, noise, timesteps[:1].repeat(len(start)))
    else:
        x = noise * scheduler.init_noise_sigma
    for t in timesteps:
        x = scheduler.step(eps_fn(x, t), t, x).prev_sample
    return x


def encode_latent(vae, x: torch.Tensor) -> torch.Tensor:
    """z0 = E(x): the VAE posterior mode, scaled by the VAE's scaling factor."""
    return vae.encode(x).latent_dist.mode() * vae.config.scaling_factor


def decode_latent(vae, z: torch.Tensor) -> torch.Tensor:
    """x_hat = D(z) (paper: D_theta)."""
    return vae.decode(z / vae.config.scaling_factor).sample


def inverse_scheduler(scheduler):
    """The DDIM inverse scheduler matching a (DDIM) scheduler: the same betas and step spacing, run from x_0 to x_T."""
    from diffusers import DDIMInverseScheduler
    return DDIMInverseScheduler.from_config(scheduler.config)


def ddim_invert(unet, inverse, z: torch.Tensor, cond: torch.Tensor, steps: int, n_steps: int) -> torch.Tensor:
    """DDIM inversion (Mokady et al. 2023 without null-text optimisation): the first `steps` of `n_steps`, with the
    `inverse_scheduler`."""
    inverse.set_timesteps(n_steps)
    for t in inverse.timesteps[:steps]:
        z = inverse.step(unet(z, t, encoder_hidden_states=cond).sample, t, z).prev_sample
    return z


def ddim_steps(unet, scheduler, z: torch.Tensor, cond: torch.Tensor, timesteps) -> torch.Tensor:
    """Deterministic DDIM updates (paper eq. 1) over `timesteps`; differentiable when grad is enabled."""
    for t in timesteps:
        z = scheduler.step(unet(z, t, encoder_hidden_states=cond).sample, t, z).prev_sample
    return z


@torch.no_grad()
def vae_roundtrip(vae, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """D(E(x)): the autoencoder's reconstruction (posterior mode), the floor of every latent method's fidelity."""
    return torch.cat([decode_latent(vae, encode_latent(vae, b)) for b in x.split(batch_size)])


@torch.no_grad()
def ddim_roundtrip(base, x: torch.Tensor, n_steps: int, batch_size: int = 64) -> torch.Tensor:
    """A frozen `ImageVariation` backbone's reconstruction, conditioned on x's image embedding: n-step DDIM inversion
    of E(x), n DDIM steps back, D (CRAFT's frozen pipeline; DIRE's x_hat)."""
    out = []
    inverse = inverse_scheduler(base.scheduler)
    for b in x.split(batch_size):
        cond = base.image_embeddings(b)
        z = ddim_invert(base.unet, inverse, encode_latent(base.vae, b), cond, n_steps, n_steps)
        base.scheduler.set_timesteps(n_steps)
        out.append(decode_latent(base.vae, ddim_steps(base.unet, base.scheduler, z, cond, base.scheduler.timesteps)))
    return torch.cat(out)
