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


def gduf_cls_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """UniGenDet eq. 6: the detection head's real/fake loss (2-class cross-entropy, as the official code)."""
    return F.cross_entropy(logits, y)


def gduf_explanation_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """UniGenDet eq. 7: next-token cross-entropy over the answer's tokens (targets -100 are padding)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def flow_matching_noisy(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """UniGenDet eq. 5: x_t = (1 - t) x0 + t * noise (t = 0 clean, t = 1 pure noise)."""
    t = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - t) * x0 + t * noise


def flow_matching_loss(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """UniGenDet eq. 8: MSE between the predicted velocity and the target velocity noise - x0."""
    return F.mse_loss(v_pred, noise - x0)


def gduf_total_loss(l_cls: torch.Tensor, l_exp: torch.Tensor, l_gen: torch.Tensor, w_cls: float, w_exp: float,
                    w_gen: float) -> torch.Tensor:
    """UniGenDet eq. 9: L = l1 L_cls + l2 L_exp + l3 L_gen."""
    return w_cls * l_cls + w_exp * l_exp + w_gen * l_gen


def diga_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """UniGenDet eq. 10: L_DIGA = -(1/N) sum_n cos(h_phi(g_l(x_t))_n, f_D(x)_n) over patches n (and the batch)."""
    return -F.cosine_similarity(projected, target, dim=-1).mean()


def diga_total_loss(l_fm: torch.Tensor, l_diga: torch.Tensor, lam: float) -> torch.Tensor:
    """UniGenDet eq. 11: L = L_FM + lambda * L_DIGA."""
    return l_fm + lam * l_diga
