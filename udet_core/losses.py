"""Every loss of the reproduced papers, one function each, named after its equation."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def craft_cr_loss(d: torch.Tensor, y: torch.Tensor, m: float, delta: float, gamma: float) -> torch.Tensor:
    """CRAFT eq. 6: d for reals (y=0); max(0, m-d) + gamma*max(0, d-(m+delta)) for fakes (y=1)."""
    fake_term = F.relu(m - d) + gamma * F.relu(d - (m + delta))
    return torch.where(y == 1, fake_term, d).mean()


def craft_recon_loss(d: torch.Tensor) -> torch.Tensor:
    """CRAFT Table 2 'L1 + CE' / 'L2 + CE': plain reconstruction loss on every image (d is L1 or L2)."""
    return d.mean()


def craft_ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CRAFT eq. 8: cross-entropy of the distance classifier's logits."""
    return F.cross_entropy(logits, y)


def craft_total_loss(l_rec: torch.Tensor, l_ce: torch.Tensor, lambda_cls: float) -> torch.Tensor:
    """CRAFT eq. 9: L_total = L_CR + lambda_cls * L_CE."""
    return l_rec + lambda_cls * l_ce
