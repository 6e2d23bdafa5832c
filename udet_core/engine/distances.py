"""Per-image reconstruction distances d(x, x_hat) -> (N,), spatially averaged (CRAFT eq. 6-7, AEROBLADE).

LPIPS needs ImageNet backbone weights that cannot be downloaded here. They are used when already in the torch
hub cache; otherwise the backbone is random (`pnet_rand=True`, the package's linear heads still apply), and
the name of the distance says which (`lpips-vgg` vs `lpips-vgg-random`). `vae-features` is a feature distance
on the workbench-trained AutoencoderKL encoder (LPIPS-style: unit-normalised channels, no learned weights).
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
from torch import nn

TORCHVISION_WEIGHTS = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}


def imagenet_weights_cached(net: str = "vgg") -> bool:
    return (Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_WEIGHTS[net]).is_file()


def mse_distance(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    return ((x - x_hat) ** 2).flatten(1).mean(1)


def resolved_name(name: str) -> str:
    """The distance `name` resolves to on this machine, by its honest name (LPIPS says '-random' when the ImageNet
    backbone is not in the torch hub cache); computed without building the network."""
    if name.startswith("lpips-"):
        net = name.split("-")[1]
        return f"lpips-{net}" + ("" if imagenet_weights_cached(net) else "-random")
    return name


class LPIPSDistance(nn.Module):
    """lpips.LPIPS (spatial average); ImageNet backbone if cached locally, else random (labelled)."""

    def __init__(self, net: str = "vgg"):
        super().__init__()
        import lpips
        self.pretrained_backbone = imagenet_weights_cached(net)
        self.name = resolved_name(f"lpips-{net}")
        # a random backbone must be the same network in every run, without touching the caller's random state
        with torch.random.fork_rng(), warnings.catch_warnings():
            torch.manual_seed(0)
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")  # lpips's `pretrained=`
            self.net = lpips.LPIPS(net=net, pnet_rand=not self.pretrained_backbone, verbose=False).eval()
        self.net.requires_grad_(False)

    def forward(self, x, x_hat):
        return self.net(x, x_hat).flatten()


class VAEFeatureDistance(nn.Module):
    """LPIPS-style distance on the (frozen) AutoencoderKL encoder's block outputs."""

    def __init__(self, vae):
        super().__init__()
        self.encoder = vae.encoder
        self.name = "vae-features"
        self.encoder.requires_grad_(False)

    def features(self, x):
        h = self.encoder.conv_in(x)
        out = []
        for block in self.encoder.down_blocks:
            h = block(h)
            out.append(h)
        return out

    def forward(self, x, x_hat):
        d = 0.0
        for a, b in zip(self.features(x), self.features(x_hat)):
            a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            d = d + ((a - b) ** 2).sum(1).flatten(1).mean(1)
        return d


@functools.lru_cache(maxsize=None)
def lpips_distance(net: str) -> LPIPSDistance:
    """One frozen LPIPS network per backbone name and process (building VGG costs a second per model)."""
    return LPIPSDistance(net)


def make_distance(name: str, vae=None):
    """'mse' | 'lpips-vgg' | 'lpips-alex' | 'vae-features' -> callable (x, x_hat) -> (N,)."""
    if name == "mse":
        return mse_distance
    if name.startswith("lpips-"):
        return lpips_distance(name.split("-")[1])
    if name == "vae-features":
        if vae is None:
            raise ValueError("the vae-features distance needs the AutoencoderKL")
        return VAEFeatureDistance(vae)
    raise ValueError(f"unknown distance {name!r}")


def distance_label(fn) -> str:
    """The honest name of a distance (says 'random' when the LPIPS backbone is untrained)."""
    return getattr(fn, "name", getattr(fn, "__name__", str(fn)).replace("_distance", ""))
