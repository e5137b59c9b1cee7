"""Image-text matching with hard negatives (TCL.md Part B §3.4), with sampling that never crashes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hard_negative_weights(sim: torch.Tensor) -> torch.Tensor:
    """Sampling weights softmax(sim) with the diagonal (the positive) set to 0; sim is [B, B] in-batch logits."""
    weights = F.softmax(sim.float(), dim=1)
    return weights.masked_fill(torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device), 0.0)


def sample_hard_negatives(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One negative column per row, drawn in proportion to ``weights`` [B, B] (diagonal excluded).

    Rows with NaN/inf or no positive mass (fp16 overflow, extreme temperatures) fall back to a uniform choice among
    the other samples. With B = 1 there is no other sample and the row's own index is returned; callers skip
    negatives then.
    """
    batch = weights.shape[0]
    if batch == 1:
        return torch.zeros(1, dtype=torch.long, device=weights.device)
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=weights.device)
    weights = torch.nan_to_num(weights.float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0) * off_diagonal
    broken = weights.sum(dim=1) <= 0
    weights = torch.where(broken[:, None], off_diagonal.float(), weights)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def itm_loss(logits: torch.Tensor, num_positive: int) -> torch.Tensor:
    """Cross-entropy over [P + N, 2] logits whose first ``num_positive`` rows are matching pairs."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[:num_positive] = 1
    return F.cross_entropy(logits.float(), labels)
