"""Import of the official TCL / ALBEF checkpoints (TCL.md Part A §A.1 (1), Part B §6).

The renames of the official names to ours are tables in tcl.models.surgery (``visual_encoder.*`` is timm's ViT; BERT
layers ``0..fusion_layer-1`` become the text encoder and the rest the fusion encoder; ``*_m`` momentum copies go
under ``momentum.models.``; the queues and their shared pointer become our two ``FeatureQueue`` buffers). The
architecture (widths, depths, fusion layer, vocabulary, queue) is read from the
tensor shapes, so TCL and ALBEF checkpoints (same key set) at any size convert without a config.

Foreign ``.pth`` files are unpickled with ``weights_only=True``; a file that needs code execution is refused unless
the caller explicitly trusts it. The models build themselves from what this module reads
(``TCLPretrainModel.from_official``, ``TCLVQAModel.from_official``).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import torch

from tcl.config import ModelConfig
from tcl.errors import TclError
from tcl.models.surgery import LAYER, convert_pretrain_state, convert_vqa_state

TRUST_HINT = "pass --trust-checkpoint (Python: trust=True) only if you trust where the file comes from"


def read_foreign_checkpoint(path: str | Path, trust: bool = False, hint: str = TRUST_HINT) -> dict[str, torch.Tensor]:
    """The state dict of an official ``.pth`` (its ``model`` entry, or the file itself if it is a state dict), or of
    a ``.safetensors`` file.

    ``hint`` says how to opt in when the file is refused (the caller's own option).

    Raises:
        TclError: the file is missing, is not a checkpoint, or needs code execution to unpickle and ``trust`` is off.
    """
    path = Path(path)
    if not path.is_file():
        raise TclError(f"{path}: checkpoint file not found.")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as error:
        global_name = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if not trust and global_name:
            raise TclError(f"{path}: refused to unpickle: the file refers to {global_name.group(1)}, and loading it "
                           f"would run code from it. {hint}.") from None
        raise TclError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error}).") from None
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TclError(f"{path}: expected a state dict (or {{'model': state dict}}); found {type(payload).__name__}.")
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise TclError(f"{path}: not a readable safetensors file ({error}).") from None


def is_vqa_checkpoint(state: dict[str, torch.Tensor]) -> bool:
    return any(key.startswith("text_decoder.") for key in state)


def infer_model_config(state: dict[str, torch.Tensor], image_size: int | None = None) -> ModelConfig:
    """The architecture of an official checkpoint, read from its tensor shapes (attention heads: width / 64)."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise TclError(f"the checkpoint has no '{key}': not an official TCL/ALBEF checkpoint.")
        return tuple(state[key].shape)

    text = "text_encoder.bert." if "text_encoder.bert.embeddings.word_embeddings.weight" in state else "text_encoder."
    layers = {int(m.group(1)) for key in state if (m := LAYER.match(key[len("text_encoder."):]))
              and key.startswith("text_encoder.")}
    cross = {int(m.group(1)) for key in state if key.startswith("text_encoder.")
             and (m := LAYER.match(key[len("text_encoder."):])) and m.group(2).startswith("crossattention.")}
    vision_width = shape("visual_encoder.cls_token")[-1]
    hidden = shape(f"{text}embeddings.word_embeddings.weight")[1]
    patch = shape("visual_encoder.patch_embed.proj.weight")[-1]
    grid = int(math.isqrt(shape("visual_encoder.pos_embed")[1] - 1))
    blocks = {int(key.split(".")[2]) for key in state if key.startswith("visual_encoder.blocks.")}
    config = ModelConfig(
        image_size=image_size or grid * patch, patch_size=patch, vision_width=vision_width,
        vision_depth=len(blocks), vision_heads=max(vision_width // 64, 1),
        vision_mlp_ratio=shape("visual_encoder.blocks.0.mlp.fc1.weight")[0] / vision_width,
        hidden_size=hidden, num_hidden_layers=len(layers), num_attention_heads=max(hidden // 64, 1),
        intermediate_size=shape(f"{text}encoder.layer.0.intermediate.dense.weight")[0],
        max_position_embeddings=shape(f"{text}embeddings.position_embeddings.weight")[0],
        fusion_layer=min(cross) if cross else len(layers), init_scheme="bert", hidden_dropout=0.1,
        attention_dropout=0.1, vocab_size=shape(f"{text}embeddings.word_embeddings.weight")[0])
    if "vision_proj.weight" in state:
        config = replace(config, embed_dim=shape("vision_proj.weight")[0])
    if "image_queue" in state:
        config = replace(config, queue_size=shape("image_queue")[1])
    return config


def read_official_pretrain(path: str | Path, image_size: int | None = None, trust: bool = False
                           ) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The architecture and our-named weights of an official pretraining checkpoint (``TCLPretrainModel.from_official``
    builds the model)."""
    state = read_foreign_checkpoint(path, trust)
    if is_vqa_checkpoint(state):
        raise TclError(f"{path}: a VQA fine-tune, not a pretraining checkpoint; convert it with --task vqa.")
    config = infer_model_config(state, image_size)
    return config, convert_pretrain_state(state, config)


def read_official_vqa(path: str | Path, image_size: int | None = None, trust: bool = False
                      ) -> tuple[ModelConfig, dict[str, torch.Tensor], bool]:
    """The architecture and our-named weights of an official VQA fine-tune, or of a pretraining checkpoint to
    initialise a VQA model from (the flag says which: True for a fine-tune)."""
    state = read_foreign_checkpoint(path, trust)
    config = infer_model_config(state, image_size)
    if is_vqa_checkpoint(state):
        return config, convert_vqa_state(state, config), True
    return config, convert_pretrain_state(state, config), False
