"""AEROBLADE (Ricker et al., CVPR 2024, "Training-free detection of latent diffusion images using autoencoder
reconstruction error"): an image made by a latent diffusion model is reconstructed almost perfectly by that
model's autoencoder. Score = -min over autoencoders of an LPIPS layer distance between x and AE(x).

Official code: the VAEs of SD1, SD2 and Kandinsky, LPIPS on ImageNet VGG16, distance of the 2nd layer only
("lpips_vgg_2"). Here: the benchmark's AutoencoderKL plus any AutoencoderKL folders listed in the config; the
VGG backbone is ImageNet's when it is in the torch cache, otherwise random (the distance name says which).
"""
from __future__ import annotations

from pathlib import Path

import torch

from udet_core.core.errors import DataError
from udet_core.core.keys import content_key
from udet_core.core.profiles import config_dict
from udet_core.core.progress import tqdm
from udet_core.data.images import to_tensor
from udet_core.engine.distances import LPIPSDistance
from udet_core.methods.base import Detector, register
from udet_core.models.sampling import vae_roundtrip


@torch.no_grad()
def lpips_layer_distance(lpips_distance: LPIPSDistance, x: torch.Tensor, y: torch.Tensor, layer: int) -> torch.Tensor:
    """The LPIPS distance of one backbone layer (1-based, as AEROBLADE's `lpips_vgg_<layer>`), per image."""
    _, per_layer = lpips_distance.net(x, y, retPerLayer=True)
    return per_layer[layer - 1].flatten()


def aeroblade_score(vaes, lpips_distance, x: torch.Tensor, layer: int) -> torch.Tensor:
    """-min_AE d_layer(x, AE(x)): higher = more likely made by one of the autoencoders' models."""
    d = torch.stack([lpips_layer_distance(lpips_distance, x, vae_roundtrip(v, x).clamp(-1, 1), layer) for v in vaes])
    return -d.min(0).values


@register("aeroblade")
class Aeroblade(Detector):
    """Training-free: the only fitted quantity is the decision threshold (calibrated on validation data)."""

    config_section = "aeroblade"
    published_size = 512   # Stable Diffusion 1.x images at their generated 512 px (AEROBLADE, Ricker et al. 2024)
    trains = False

    takes_backbone = "AutoencoderKL folders (or pipeline folders with a vae/ subfolder), one or more"
    weights_needed = ("vae",)

    def __init__(self, p, run_dir, backbone=None, weights=None):
        super().__init__(p, run_dir, backbone, weights)
        self._vaes = None
        self.lpips = LPIPSDistance("vgg")

    def config(self):
        return {**config_dict(self.cfg), "distance": self.lpips.name,
                "autoencoders": [content_key(q) for q in self.autoencoder_paths()]}

    def autoencoder_paths(self) -> list:
        """The given backbones, else the profile's VAE and `extra_autoencoders`; a pipeline folder means its vae/."""
        given = [self.backbone] if isinstance(self.backbone, str) else list(self.backbone or [])
        paths = given or [self.weights.folder("vae", self.name), *self.cfg.extra_autoencoders]
        out = []
        for q in map(Path, paths):
            q = q / "vae" if (q / "model_index.json").is_file() else q
            if not (q / "config.json").is_file():
                raise DataError(q, "not an AutoencoderKL folder (config.json missing) nor a pipeline folder with vae/")
            out.append(q)
        return out

    def autoencoders(self):
        if self._vaes is None:
            from diffusers import AutoencoderKL
            self._vaes = [AutoencoderKL.from_pretrained(str(q)).eval().requires_grad_(False)
                          for q in self.autoencoder_paths()]
        return self._vaes

    def score(self, images, *, progress=False):
        x = to_tensor(images)
        return torch.cat([aeroblade_score(self.autoencoders(), self.lpips, b, self.cfg.layer)
                          for b in tqdm(x.split(self.cfg.batch_size), desc="AEROBLADE", disable=not progress)]).numpy()
