"""Initial weights from public checkpoints: DeiT/ViT for the image encoder, BERT for the text and fusion encoders.

Called by the training engines after a model is built (never inside a constructor). Each part is a hub name (a timm
model, a BERT repository) or a local file or folder; ``tcl.pretrained_parts`` finds its files, the hub's offline mode
honoured.
"""

from __future__ import annotations

import logging

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from tcl.config import ModelConfig
from tcl.models.convert import read_foreign_checkpoint
from tcl.models.surgery import bert_to_tcl, load_strict, timm_to_vision
from tcl.pretrained_parts import locate, text_part, vision_part

logger = logging.getLogger(__name__)


def load_vision_pretrained(encoder: VisionTransformer, name_or_path: str) -> None:
    """Initialises ``encoder`` from a timm model name, a weights file (``.pth``/``.bin`` state dict or
    ``.safetensors``) or a folder holding one (as timm saves a model, or the hub's cache folder).

    Position embeddings are resampled to the encoder's resolution; only the classification head may be unused.
    """
    path = locate(vision_part(name_or_path))
    state = read_foreign_checkpoint(path, hint="model.vision_pretrained takes plain weights only: re-save them "
                                               "where you trust the file (torch.save(state_dict) or safetensors)")
    load_strict(encoder, timm_to_vision(state, encoder.patch_embed.num_patches), f"vision weights {name_or_path}",
                "Check the model.vision_* sizes.")
    logger.info("image encoder initialised from %s (%s)", name_or_path, path)



def load_text_pretrained(model: nn.Module, name_or_path: str, fusion_layer: int) -> None:
    """Loads BERT weights into ``model``'s text encoder, fusion encoder self-attention/FFN and MLM head."""
    from transformers import BertForMaskedLM

    bert = BertForMaskedLM.from_pretrained(str(locate(text_part(name_or_path))))
    renamed = bert_to_tcl(bert.state_dict(), fusion_layer)
    if not hasattr(model, "mlm_head"):  # a VQA model: BERT's MLM head has no place in it
        renamed = {name: tensor for name, tensor in renamed.items() if not name.startswith("mlm_head.")}
    # Everything outside the text side (the image encoder, projections, heads) and the fusion layers'
    # cross-attention (new in TCL) stays as initialised.
    bert_side = ("text_encoder.", "fusion_encoder.", "mlm_head.")
    fresh = tuple(name for name in model.state_dict() if not name.startswith(bert_side) or ".crossattention." in name)
    load_strict(model, renamed, f"BERT weights {name_or_path}", "Check model.hidden_size, num_hidden_layers, "
                "vocab_size and max_position_embeddings against the BERT checkpoint.", allow_missing=fresh)
    logger.info("text and fusion encoders initialised from %s (%d tensors)", name_or_path, len(renamed))


def initialise_from_pretrained(model: nn.Module, config: ModelConfig) -> None:
    """Applies ``model.vision_pretrained`` and ``model.text_pretrained``, then re-copies any momentum encoders."""
    if config.vision_pretrained:
        load_vision_pretrained(model.vision_encoder, config.vision_pretrained)
    if config.text_pretrained:
        load_text_pretrained(model, config.text_pretrained, config.fusion_layer)
    if getattr(model, "momentum", None) is not None and (config.vision_pretrained or config.text_pretrained):
        if hasattr(model, "sync_momentum"):  # the VQA model's teacher covers its own set of modules
            model.sync_momentum()
        else:
            model.momentum.copy_from(model.online_modules())
