"""Alignment and uniformity on the hypersphere (Wang & Isola, 2020), logged as diagnostics of the features."""

from __future__ import annotations

import torch


def alignment(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """E ||x_i − y_i||² over positive pairs of unit vectors (lower is better aligned)."""
    return (x - y).pow(2).sum(dim=1).mean()


def uniformity(x: torch.Tensor) -> torch.Tensor:
    """log E exp(−2 ||x_i − x_j||²) over distinct pairs of a batch (lower is more uniform); 0 for B < 2."""
    if x.shape[0] < 2:
        return x.sum() * 0.0
    return torch.pdist(x.float()).pow(2).mul(-2.0).exp().mean().log()
