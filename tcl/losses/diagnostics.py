"""Alignment and uniformity on the hypersphere (Wang & Isola, 2020), logged and optionally used as a regulariser."""

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


def align_uniform_loss(image_feat: torch.Tensor, text_feat: torch.Tensor) -> torch.Tensor:
    """The regulariser: alignment of image-text pairs plus the mean uniformity of both modalities."""
    return alignment(image_feat, text_feat) + 0.5 * (uniformity(image_feat) + uniformity(text_feat))
