"""Global states of token sequences (``model.feature_pool``): the [CLS] token, as TCL, or the mean of the tokens;
and the states of boxes in an image (the mean of the patch tokens they cover)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pool_image(embeds: torch.Tensor, pool: str) -> torch.Tensor:
    """The image's global state: its [CLS] token (TCL), or the mean of its patch tokens."""
    return embeds[:, 0] if pool == "cls" else embeds[:, 1:].mean(dim=1)


def pool_text(embeds: torch.Tensor, attention_mask: torch.Tensor, pool: str) -> torch.Tensor:
    """The text's global state: its [CLS] token (TCL), or the mean of its real (unpadded) tokens."""
    if pool == "cls":
        return embeds[:, 0]
    mask = attention_mask[..., None].to(embeds.dtype)
    return (embeds * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def pool_boxes(embeds: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """[B, R, D] mean of the patch tokens whose centres lie in each box (X-VLM's region features), or the token
    under the box's centre when the box covers no patch centre.

    Args:
        embeds: [B, 1 + P, D] image tokens ([CLS] first, then a square grid of patches, row by row).
        boxes: [B, R, 4] (centre x, centre y, width, height) in fractions of the image.
    """
    patches = embeds[:, 1:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"pool_boxes needs a square patch grid, got {patches.shape[1]} patch tokens")
    centres = (torch.arange(side, device=embeds.device, dtype=boxes.dtype) + 0.5) / side
    cx, cy, w, h = boxes.unbind(dim=-1)
    inside_x = (centres - cx[..., None]).abs() <= w[..., None] / 2  # [B, R, side] columns
    inside_y = (centres - cy[..., None]).abs() <= h[..., None] / 2  # [B, R, side] rows
    mask = (inside_y[..., :, None] & inside_x[..., None, :]).flatten(-2)  # [B, R, P], row by row
    centre = (cy * side).long().clamp(0, side - 1) * side + (cx * side).long().clamp(0, side - 1)
    empty = ~mask.any(dim=-1, keepdim=True)  # a box between patch centres takes the patch it lies in
    mask = torch.where(empty, F.one_hot(centre, side * side).bool(), mask)
    weights = mask.to(patches.dtype)
    return weights @ patches / weights.sum(dim=-1, keepdim=True)
