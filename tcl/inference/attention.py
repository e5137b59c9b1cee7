"""Where the model looked: the fusion encoder's cross-attention over the image patches, as a heat map.

``capture_cross_attention`` hooks the cross-attention projections of every fusion layer and recomputes their
attention probabilities from the hooked inputs (the layers themselves run fused SDPA, which does not return them), so
the model code stays untouched and the maps come from exactly the forward pass that produced the answers.
``attention_grid`` reduces them to one patch grid per question: the mean over fusion layers, heads and the
question's real (unpadded) tokens, without the image's class token, scaled to a maximum of 1.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image

# The ViT's image tokens start with its class token; only the patch tokens have a place in the image.
IMAGE_PREFIX_TOKENS = 1


@contextmanager
def capture_cross_attention(model) -> Iterator[list[torch.Tensor]]:
    """Collects [B, heads, question tokens, image tokens] probabilities, one per fusion layer and forward pass."""
    maps: list[torch.Tensor] = []

    def hook(module, args, _output):
        hidden, context, mask, *rest = args
        q, k = module._split(module.query(hidden)), module._split(module.key(context))
        context_index = rest[0] if rest else None  # questions sharing an image name its row
        if context_index is not None:
            k = k.index_select(0, context_index)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        maps.append(scores.float().softmax(dim=-1).detach())

    handles = [layer.crossattention.self.register_forward_hook(hook) for layer in model.fusion_encoder.layer]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def attention_grid(maps: list[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, G, G] patch attention of each question (max 1), from the maps of one forward pass."""
    if not maps:
        raise ValueError("no cross-attention was captured; run the model inside capture_cross_attention")
    per_token = torch.stack(maps).mean(dim=(0, 2))  # [B, question tokens, image tokens]
    weights = attention_mask.to(per_token.device, per_token.dtype)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1.0)
    patches = (per_token * weights[:, :, None]).sum(dim=1)[:, IMAGE_PREFIX_TOKENS:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
    grid = patches.reshape(-1, side, side)
    return grid / grid.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)


def heatmap_overlay(image: Image.Image, grid: torch.Tensor | np.ndarray, size: int = 320,
                    opacity: float = 0.8) -> Image.Image:
    """The image (longer side ``size``) with the grid drawn over it in a colour map; each pixel's colour is mixed in
    by its attention, so unattended regions keep the image as it is."""
    from matplotlib import colormaps

    scale = size / max(image.size)
    shown = image.convert("RGB").resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                        Image.Resampling.BICUBIC)
    values = np.asarray(grid, dtype=np.float32)
    # The model sees the image squashed to a square, so the square grid is stretched back over the real shape.
    smooth = Image.fromarray(np.uint8(np.clip(values, 0, 1) * 255)).resize(shown.size, Image.Resampling.BILINEAR)
    weight = np.asarray(smooth, dtype=np.float32)[..., None] / 255.0
    colours = colormaps["jet"](weight[..., 0])[..., :3]
    alpha = opacity * weight
    blended = (1 - alpha) * np.asarray(shown, dtype=np.float32) / 255.0 + alpha * colours
    return Image.fromarray(np.uint8(np.clip(blended, 0, 1) * 255))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
