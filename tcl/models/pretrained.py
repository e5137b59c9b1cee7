"""Initial weights from public checkpoints: DeiT/ViT for the image encoder, BERT for the text and fusion encoders.

Called by the training engines after a model is built (never inside a constructor). Names are Hugging Face hub
names (used when the hub is reachable) or local paths: a timm checkpoint file for the image encoder, a
``save_pretrained`` BERT directory for the text side.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from tcl.config import ModelConfig
from tcl.models.saving import shape_mismatches
from tcl.models.vision import load_vision_pretrained

logger = logging.getLogger(__name__)
_LAYER = re.compile(r"^bert\.encoder\.layer\.(\d+)\.(.*)$")


def bert_to_tcl(state: dict[str, torch.Tensor], fusion_layer: int) -> dict[str, torch.Tensor]:
    """Renames a ``BertForMaskedLM`` state dict to our modules: embeddings and layers [0, fusion_layer) → text
    encoder, layers from fusion_layer → fusion encoder (their cross-attention stays newly initialised, as in TCL),
    the MLM transform and bias → MLM head (its decoder is tied to the word embeddings)."""
    renamed = {}
    for name, tensor in state.items():
        layer = _LAYER.match(name)
        if layer:
            index, rest = int(layer.group(1)), layer.group(2)
            target = (f"text_encoder.encoder.layer.{index}.{rest}" if index < fusion_layer
                      else f"fusion_encoder.layer.{index - fusion_layer}.{rest}")
        elif name.startswith("bert.embeddings.") and not name.endswith("position_ids"):
            target = "text_encoder." + name[len("bert."):]
        elif name.startswith("cls.predictions.transform.") or name == "cls.predictions.bias":
            target = "mlm_head." + name[len("cls."):]
        else:
            continue  # pooler, tied decoder, position_ids
        renamed[target] = tensor
    return renamed


def load_text_pretrained(model: nn.Module, name_or_path: str, fusion_layer: int) -> None:
    """Loads BERT weights into ``model``'s text encoder, fusion encoder self-attention/FFN and MLM head."""
    from transformers import BertForMaskedLM

    bert = BertForMaskedLM.from_pretrained(name_or_path)
    renamed = bert_to_tcl(bert.state_dict(), fusion_layer)
    unknown = [k for k in renamed if k not in model.state_dict()]
    wrong = shape_mismatches(model, renamed) or (f"no place for {unknown[:3]}" if unknown else None)
    if wrong:
        raise ValueError(f"BERT weights {name_or_path} do not fit the configured text/fusion encoders ({wrong}); "
                         f"check model.hidden_size, num_hidden_layers, vocab_size, max_position_embeddings.")
    model.load_state_dict(renamed, strict=False)
    logger.info("text and fusion encoders initialised from %s (%d tensors)", name_or_path, len(renamed))


def initialise_from_pretrained(model: nn.Module, config: ModelConfig) -> None:
    """Applies ``model.vision_pretrained`` and ``model.text_pretrained``, then re-copies any momentum encoders."""
    if config.vision_pretrained:
        load_vision_pretrained(model.vision_encoder, config.vision_pretrained)
    if config.text_pretrained:
        load_text_pretrained(model, config.text_pretrained, config.fusion_layer)
    if hasattr(model, "momentum") and (config.vision_pretrained or config.text_pretrained):
        model.momentum.copy_from(model.online_modules())
