"""The image encoder: a timm VisionTransformer returning all tokens after the final norm (TCL.md Part B §1.1)."""

from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path

import torch
from timm.layers import PatchEmbed, resample_abs_pos_embed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from tcl.config import ModelConfig
from tcl.models.saving import shape_mismatches

logger = logging.getLogger(__name__)


class ConvStemPatchEmbed(PatchEmbed):
    """Patch embedding by early convolutions (Xiao et al., 2021, "Early convolutions help transformers see better"):
    stride-2 3×3 convolutions with BatchNorm and ReLU down to the patch grid, then a 1×1 projection.

    The token grid is the same as the linear patch embedding's, so everything after it is unchanged. The locality
    prior makes a ViT trained from scratch on little data learn far faster; checkpoints with the standard linear
    embedding (the official ones) need ``model.vision_stem: patch``.
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


def build_vision_encoder(model: ModelConfig) -> VisionTransformer:
    """ViT with a class token, qkv bias, LayerNorm eps 1e-6, no head and no pooling (keys match timm/DeiT).

    ``model.init_scheme: xavier`` selects timm's "jax" initialisation (Xavier-uniform linear layers) instead of its
    N(0, 0.02) default, for the same reason as in the text encoder: a small model trained from scratch;
    ``xavier_qk`` keeps timm's default but draws the query and key projections Xavier-uniform (see
    ``tcl.models.bert.init_bert_weights``).
    ``model.vision_stem: conv`` replaces the linear patch embedding by ``ConvStemPatchEmbed``;
    ``model.pos_embed_init: sincos`` starts the position embeddings from a 2-D sine-cosine grid.
    """
    embed_layer = ConvStemPatchEmbed if model.vision_stem == "conv" else PatchEmbed
    encoder = VisionTransformer(img_size=model.image_size, patch_size=model.patch_size, embed_dim=model.vision_width,
                                depth=model.vision_depth, num_heads=model.vision_heads,
                                mlp_ratio=model.vision_mlp_ratio, qkv_bias=True, num_classes=0, global_pool="",
                                class_token=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), embed_layer=embed_layer,
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
    """Sets the patch positions to a 2-D sine-cosine grid (amplitude 1) and the class token's to zero; they stay
    learnable."""
    grid = encoder.patch_embed.grid_size
    table = build_sincos2d_pos_embed(list(grid), encoder.embed_dim)
    with torch.no_grad():
        encoder.pos_embed.zero_()
        encoder.pos_embed[0, 1:] = table


def resample_pos_embed(pos_embed: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Bicubic resampling of the patch-grid part of [1, 1 + P, D] position embeddings to ``num_patches`` patches,
    without antialiasing (as TCL's interpolation), keeping the class-token position unchanged."""
    if pos_embed.shape[1] == num_patches + 1:
        return pos_embed
    side = int(round(num_patches ** 0.5))
    return resample_abs_pos_embed(pos_embed, new_size=(side, side), num_prefix_tokens=1, interpolation="bicubic",
                                  antialias=False)


def load_vision_pretrained(encoder: VisionTransformer, name_or_path: str) -> None:
    """Initialises ``encoder`` from a local checkpoint file or a timm model name (hub, when reachable).

    Position embeddings are resampled to the encoder's resolution; only the classification head may be unused.
    """
    path = Path(name_or_path)
    if path.is_file():
        from tcl.models.convert import read_foreign_checkpoint

        state = read_foreign_checkpoint(path, hint="model.vision_pretrained takes plain weights only: re-save them "
                                                   "where you trust the file (torch.save(state_dict) or safetensors)")
    else:
        import timm

        state = timm.create_model(name_or_path, pretrained=True, num_classes=0).state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist.", "fc_norm."))}
    if "pos_embed" in state:
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], encoder.patch_embed.num_patches)
    wrong = shape_mismatches(encoder, state)
    if wrong:
        raise ValueError(f"vision weights {name_or_path} do not fit the configured ViT: {wrong}. Check model.vision_* "
                         "sizes.")
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"vision weights {name_or_path} do not fit the configured ViT: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}. Check model.vision_* sizes.")
