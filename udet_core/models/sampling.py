"""DDIM sampling loops on diffusers schedulers (shared by the fake families, CRAFT and DIRE)."""
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
