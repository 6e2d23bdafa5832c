"""A substitute feature network for FID-style distances when Inception weights are absent (no downloads here).

A small CNN trained by the workbench to tell which bundled photograph a real crop comes from (all photos, several
scales); its penultimate activations are the features. Every table that uses it says so ("workbench feature net").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from udet_core.data.images import to_tensor
from udet_core.data.sources import PHOTOS

INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"   # torchvision's ImageNet Inception-v3 (used when in the hub cache)


class FeatureNet(nn.Module):
    """conv(32)-conv(64)-conv(128) with stride-2 downsampling, global average pool, a linear projection to
    `feature_dim` features (kept below the sample counts of FID-style distances, whose covariances must be full
    rank), linear head."""

    def __init__(self, n_classes: int, width: int = 32, feature_dim: int = 32):
        super().__init__()
        layers, c = [], 3
        for w in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c, w, 3, 2, 1), nn.GroupNorm(8, w), nn.SiLU(), nn.Conv2d(w, w, 3, 1, 1), nn.SiLU()]
            c = w
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, feature_dim))
        self.head = nn.Linear(feature_dim, n_classes)

    def forward(self, x):
        return self.head(self.body(x))

    @torch.no_grad()
    def features(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 (N, H, W, 3) -> (N, feature_dim) features."""
        self.eval()
        return torch.cat([self.body(b) for b in to_tensor(images).split(batch_size)]).numpy()


def save_featnet(net: FeatureNet, folder) -> None:
    from safetensors.torch import save_file
    save_file(net.state_dict(), str(Path(folder) / "featnet.safetensors"))


def load_featnet(folder) -> FeatureNet:
    from safetensors.torch import load_file

    state = load_file(str(Path(folder) / "featnet.safetensors"))
    net = FeatureNet(len(PHOTOS), feature_dim=state["head.weight"].shape[1])
    net.load_state_dict(state)
    return net.eval()
