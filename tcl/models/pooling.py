"""Global states of token sequences (``model.feature_pool``): the [CLS] token, as TCL, or the mean of the tokens."""

from __future__ import annotations

import torch


def pool_image(embeds: torch.Tensor, pool: str) -> torch.Tensor:
    """The image's global state: its [CLS] token (TCL), or the mean of its patch tokens."""
    return embeds[:, 0] if pool == "cls" else embeds[:, 1:].mean(dim=1)


def pool_text(embeds: torch.Tensor, attention_mask: torch.Tensor, pool: str) -> torch.Tensor:
    """The text's global state: its [CLS] token (TCL), or the mean of its real (unpadded) tokens."""
    if pool == "cls":
        return embeds[:, 0]
    mask = attention_mask[..., None].to(embeds.dtype)
    return (embeds * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
