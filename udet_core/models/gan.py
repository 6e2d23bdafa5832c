"""DCGAN (Radford et al. 2016) whose generator upsamples with transposed convolutions: the classic
source of checkerboard fingerprints (Odena et al. 2016), sized for a power-of-two resolution."""
from __future__ import annotations

import math

from torch import nn


class Generator(nn.Module):
    def __init__(self, nz: int, ngf: int, resolution: int):
        super().__init__()
        n_up = int(math.log2(resolution)) - 2          # 4x4 -> resolution
        ch = ngf * 2 ** (n_up - 1)
        layers = [nn.ConvTranspose2d(nz, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.nz = nz

    def forward(self, z):
        return self.net(z.view(len(z), self.nz, 1, 1))


class Discriminator(nn.Module):
    def __init__(self, ndf: int, resolution: int):
        super().__init__()
        n_down = int(math.log2(resolution)) - 2
        layers, ch = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)], ndf
        for _ in range(n_down - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten()
