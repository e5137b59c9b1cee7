"""The image encoder: a timm VisionTransformer returning all tokens after the final norm (TCL.md Part B §1.1), fed
uint8 pixels that it normalises itself (so loaders and host-to-device copies move a quarter of the bytes)."""

from __future__ import annotations

import logging
import math
from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from tcl.config import ModelConfig

logger = logging.getLogger(__name__)

# TCL's (CLIP's) per-channel normalisation of [0, 1] pixels.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class PixelVisionTransformer(VisionTransformer):
    """timm's ViT taking uint8 [B, 3, H, W] pixels, normalised on the model's device in fp32 (images still in
    floating point are taken as normalised already). The mean and std are buffers that no checkpoint stores."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = (x.float() - self.pixel_mean.float()) / self.pixel_std.float()
        return super().forward_features(x)


class ConvStemPatchEmbed(PatchEmbed):
    """Patch embedding by early convolutions (Xiao et al., 2021, "Early convolutions help transformers see better"):
    stride-2 3×3 convolutions with BatchNorm and ReLU down to the patch grid, then a 1×1 projection.

    The token grid is the same as the linear patch embedding's, so everything after it is unchanged. The locality
    prior makes a ViT trained from scratch on little data learn far faster; checkpoints with the standard linear
    embedding (the official ones) need ``model.vision_stem: patch``. BatchNorm measured better here than GroupNorm
    (R@1 47 / 54 against 40 / 47 after the tiny pretraining); in multi-process runs its running statistics are
    averaged over the processes after every step (``tcl.engine.runtime.average_batchnorm_statistics``).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        stride = self.patch_size[0]
        steps = int(math.log2(stride))
        if 2 ** steps != stride or self.patch_size[0] != self.patch_size[1]:
            raise ValueError(f"the convolutional stem needs a square power-of-two patch size, got {self.patch_size}")
        embed_dim = self.proj.out_channels
        layers: list[nn.Module] = []
        channels = self.proj.in_channels
        for step in range(steps):
            width = max(embed_dim // 2 ** (steps - step), 16)
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            channels = width
        layers.append(nn.Conv2d(channels, embed_dim, 1))
        self.proj = nn.Sequential(*layers)


def build_vision_encoder(model: ModelConfig) -> PixelVisionTransformer:
    """ViT with a class token, qkv bias, LayerNorm eps 1e-6, no head and no pooling (keys match timm/DeiT).

    ``model.init_scheme: xavier`` selects timm's "jax" initialisation (Xavier-uniform linear layers) instead of its
    N(0, 0.02) default, for the same reason as in the text encoder: a small model trained from scratch;
    ``xavier_qk`` keeps timm's default but draws the query and key projections Xavier-uniform (see
    ``tcl.models.bert.init_bert_weights``).
    ``model.vision_stem: conv`` replaces the linear patch embedding by ``ConvStemPatchEmbed``;
    ``model.pos_embed_init: sincos`` starts the position embeddings from a 2-D sine-cosine grid.
    """
    embed_layer = ConvStemPatchEmbed if model.vision_stem == "conv" else PatchEmbed
    encoder = PixelVisionTransformer(img_size=model.image_size, patch_size=model.patch_size,
                                     embed_dim=model.vision_width, depth=model.vision_depth,
                                     num_heads=model.vision_heads,
                                     mlp_ratio=model.vision_mlp_ratio, qkv_bias=True, num_classes=0,
                                     global_pool="", class_token=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                                     embed_layer=embed_layer,
                                     weight_init="jax" if model.init_scheme == "xavier" else "")
    if model.init_scheme == "xavier_qk":
        init_query_key_xavier(encoder)
    if model.pos_embed_init == "sincos":
        init_sincos_pos_embed(encoder)
    return encoder


def init_query_key_xavier(encoder: VisionTransformer) -> None:
    """Xavier-uniform query and key rows of every block's fused qkv projection (``init_scheme: xavier_qk``)."""
    with torch.no_grad():
        for block in encoder.blocks:
            width = block.attn.qkv.weight.shape[1]
            for part in (0, 1):  # rows [0, D) are the queries, [D, 2D) the keys
                nn.init.xavier_uniform_(block.attn.qkv.weight[part * width:(part + 1) * width])


def init_sincos_pos_embed(encoder: VisionTransformer) -> None:
    """Sets the patch positions to a 2-D sine-cosine grid (amplitude 1, near the conv stem's output std of ~0.6) and
    the class token's to zero; they stay learnable."""
    grid = encoder.patch_embed.grid_size
    table = build_sincos2d_pos_embed(list(grid), encoder.embed_dim)
    with torch.no_grad():
        encoder.pos_embed.zero_()
        encoder.pos_embed[0, 1:] = table
