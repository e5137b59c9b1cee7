"""Checkpoint surgery: every mapping between weight naming schemes, and the one strict loader.

As timm keeps its ``checkpoint_filter_fn``, the renames live here as explicit tables, apart from the models and from
the code that reads files: the official TCL / ALBEF checkpoints → our pretraining and VQA models, a Hugging Face
``BertForMaskedLM`` → our text and fusion encoders and MLM head, a timm / DeiT ViT → our image encoder, and our
pretraining model → the VQA model's answer decoder (TCL.md Part B §6). ``load_strict`` loads a state dict and names
every missing, unexpected and mis-shaped weight in one error type, ``WeightsMismatch``.
"""

from __future__ import annotations

import logging
import re

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from tcl.config import ModelConfig
from tcl.errors import TclError
from tcl.models.bert import TIED_DECODER_SUFFIX

logger = logging.getLogger(__name__)
# A BERT layer's weights, with or without the "bert." of BertForMaskedLM: layer number, rest of the name.
LAYER = re.compile(r"^(?:bert\.)?encoder\.layer\.(\d+)\.(.*)$")


class WeightsMismatch(TclError):
    """A state dict that does not fit the model it is loaded into."""


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str, hint: str,
                allow_missing: tuple[str, ...] = ()) -> list[str]:
    """Loads ``state`` into ``model``; every model weight must be given (a tied LM decoder, stored once, and names
    starting with ``allow_missing`` excepted), every given weight must exist with the model's shape.

    Returns:
        The model weights left at their current values (those allowed to be missing).

    Raises:
        WeightsMismatch: naming ``source``, what does not fit, and ``hint`` (what to do).
    """
    wrong = shape_mismatches(model, state)
    if wrong:
        raise WeightsMismatch(f"{source}: weights have other shapes than the model: {wrong}. {hint}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not name.endswith(TIED_DECODER_SUFFIX)]
    not_allowed = [name for name in missing if not name.startswith(allow_missing)]
    if not_allowed or unexpected:
        raise WeightsMismatch(f"{source}: weights do not fit the model (missing {_few(not_allowed)}, unexpected "
                              f"{_few(unexpected)}). {hint}")
    return missing


def _few(names: list[str]) -> str:
    names = sorted(names)
    return str(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def shape_mismatches(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """A readable list of the weights whose shapes differ between ``state`` and ``model`` (None if all fit);
    ``load_state_dict`` would otherwise stop with a bare size-mismatch error."""
    own = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    wrong = [f"{name} is {list(value.shape)} there but {list(own[name])} here"
             for name, value in state.items() if name in own and tuple(value.shape) != own[name]]
    if not wrong:
        return None
    more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
    return "; ".join(wrong[:3]) + more



# -- the official TCL / ALBEF checkpoints ------------------------------------------------------------------

# Official prefix → ours, for the online modules; the momentum copy adds "_m" to the official module name and
# "momentum.models." in front of ours. The BERT layers are split separately (``_bert_name``).
MODULE_RENAMES = (("visual_encoder", "vision_encoder"), ("vision_proj", "vision_proj"), ("text_proj", "text_proj"))
BERT_RENAMES = ((".bert.embeddings.", "text_encoder.embeddings."), (".cls.predictions.", "mlm_head.predictions."))
# Official keys with no counterpart by design: a constant buffer and an alias of the MLM bias.
REDUNDANT = re.compile(r"(^|\.)embeddings\.position_ids$|cls\.predictions\.decoder\.bias$")


def convert_pretrain_state(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Renames an official pretraining state dict to ours, resampling position embeddings to ``config.image_size``.

    Raises:
        TclError: listing official keys the table does not know.
    """
    converted, unknown = {}, []
    num_patches = (config.image_size // config.patch_size) ** 2
    for key, tensor in state.items():
        if REDUNDANT.search(key):
            continue
        for name, value in _rename(key, tensor, config.fusion_layer):
            if name is None:
                unknown.append(key)
            else:
                converted[name] = value
    if unknown:
        raise TclError(f"{len(unknown)} checkpoint keys have no place in the TCL model: {', '.join(unknown[:6])}. "
                       f"Is this a TCL/ALBEF pretraining checkpoint?")
    for key in ("vision_encoder.pos_embed", "momentum.models.vision_encoder.pos_embed"):
        if key in converted:
            converted[key] = resample_pos_embed(converted[key], num_patches)
    return converted


def _rename(key: str, tensor: torch.Tensor, fusion_layer: int) -> list[tuple[str | None, torch.Tensor]]:
    if key == "temp":
        return [("temp", tensor.reshape(1))]  # a 0-d scalar there, shape [1] here (DeepSpeed broadcasts it)
    if key in ("image_queue", "text_queue"):
        return [(f"{key}.queue", tensor)]
    if key == "queue_ptr":  # one pointer for both queues there, one per queue here
        return [("image_queue.ptr", tensor), ("text_queue.ptr", tensor.clone())]
    if key.startswith("itm_head."):
        return [(key, tensor)]
    module, _, rest = key.partition(".")
    momentum = module.endswith("_m")
    base = module[:-2] if momentum else module
    prefix = "momentum.models." if momentum else ""
    for official, ours in MODULE_RENAMES:
        if base == official:
            return [(f"{prefix}{ours}.{rest}", tensor)]
    if base == "text_encoder":
        return [(_bert_name(rest, fusion_layer, prefix), tensor)]
    return [(None, tensor)]


def _bert_name(rest: str, fusion_layer: int, prefix: str) -> str | None:
    """``bert.embeddings.*``, ``bert.encoder.layer.{n}.*`` and ``cls.predictions.*`` of an official text encoder."""
    layer = LAYER.match(rest)
    if layer:
        n, tail = int(layer.group(1)), layer.group(2)
        if n < fusion_layer:
            return f"{prefix}text_encoder.encoder.layer.{n}.{tail}"
        return f"{prefix}fusion_encoder.layer.{n - fusion_layer}.{tail}"
    for official, ours in BERT_RENAMES:
        if f".{rest}".startswith(official):
            return prefix + ours + f".{rest}"[len(official):]
    return None


def convert_vqa_state(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Renames an official VQA fine-tune (TCL.md Part B §6.3: ``text_encoder.{embeddings, encoder.layer.*}``,
    ``text_decoder.*``) to our decoder-head VQA model; the momentum copies (training only) are left out."""
    converted, unknown = {}, []
    num_patches = (config.image_size // config.patch_size) ** 2
    for key, tensor in state.items():
        module = key.partition(".")[0]
        if REDUNDANT.search(key) or module.endswith("_m"):
            continue
        if module == "visual_encoder":
            converted["vision_encoder." + key.partition(".")[2]] = tensor
        elif module == "text_decoder":
            converted[key] = tensor  # our decoder keeps ALBEF's names
        elif module == "text_encoder":
            rest = key.partition(".")[2]
            layer = LAYER.match(rest)
            if layer:
                converted[_bert_name(rest, config.fusion_layer, "")] = tensor
            elif rest.startswith("embeddings."):
                converted["text_encoder." + rest] = tensor
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise TclError(f"{len(unknown)} checkpoint keys have no place in the TCL VQA model: {', '.join(unknown[:6])}.")
    converted["vision_encoder.pos_embed"] = resample_pos_embed(converted["vision_encoder.pos_embed"], num_patches)
    return converted


# -- Hugging Face BERT → text and fusion encoders ---------------------------------------------------------------

def bert_to_tcl(state: dict[str, torch.Tensor], fusion_layer: int) -> dict[str, torch.Tensor]:
    """Renames a ``BertForMaskedLM`` state dict to our modules: embeddings and layers [0, fusion_layer) → text
    encoder, layers from fusion_layer → fusion encoder (their cross-attention stays newly initialised, as in TCL),
    the MLM transform and bias → MLM head (its decoder is tied to the word embeddings)."""
    renamed = {}
    for name, tensor in state.items():
        layer = LAYER.match(name)
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


# -- timm / DeiT ViT → image encoder ---------------------------------------------------------------------------

TIMM_UNUSED = ("head.", "head_dist.", "fc_norm.")


def timm_to_vision(state: dict[str, torch.Tensor], num_patches: int) -> dict[str, torch.Tensor]:
    """A timm ViT state dict for our image encoder: the classification heads dropped, position embeddings
    resampled to ``num_patches``."""
    state = {k: v for k, v in state.items() if not k.startswith(TIMM_UNUSED)}
    if "pos_embed" in state:
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], num_patches)
    return state


def resample_pos_embed(pos_embed: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Bicubic resampling of the patch-grid part of [1, 1 + P, D] position embeddings to ``num_patches`` patches,
    without antialiasing (as TCL's interpolation), keeping the class-token position unchanged."""
    if pos_embed.shape[1] == num_patches + 1:
        return pos_embed
    side = int(round(num_patches ** 0.5))
    return resample_abs_pos_embed(pos_embed, new_size=(side, side), num_prefix_tokens=1, interpolation="bicubic",
                                  antialias=False)


# -- our pretraining model → the VQA model -----------------------------------------------------------------------

# What the VQA model takes from a pretraining state dict; the rest (momentum copies, queues, projections, ITM/MLM
# heads, temperature) is pretraining-only.
VQA_ENCODER_PREFIXES = ("vision_encoder.", "text_encoder.", "fusion_encoder.")


def pretrain_to_vqa(state: dict[str, torch.Tensor], num_patches: int,
                    decoder_state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """A VQA model's initial weights from a pretraining state dict: the three encoders, position embeddings resampled
    to ``num_patches``, and, for the decoder head (``decoder_state``: its current ``text_decoder.*`` entries), the
    answer decoder (``decoder_state_from_pretrain``)."""
    encoders = {k: v for k, v in state.items() if k.startswith(VQA_ENCODER_PREFIXES)}
    key = "vision_encoder.pos_embed"
    if key in encoders:
        encoders[key] = resample_pos_embed(encoders[key], num_patches)
    if decoder_state is not None:
        encoders.update(decoder_state_from_pretrain(state, decoder_state))
    return encoders


_DECODER_SOURCES = (("text_encoder.embeddings.", "text_decoder.bert.embeddings."),
                    ("fusion_encoder.layer.", "text_decoder.bert.encoder.layer."),
                    ("mlm_head.predictions.", "text_decoder.cls.predictions."))


def decoder_state_from_pretrain(state: dict[str, torch.Tensor], decoder_state: dict[str, torch.Tensor]
                                ) -> dict[str, torch.Tensor]:
    """The decoder's initial weights from a pretraining state dict: layer j ← fusion layer j, embeddings ← text
    embeddings, LM head ← MLM head.

    Weights whose shapes differ (the cross-attention key/value when the image width is not the text width) keep
    their random initialisation, with a warning that names them.

    Args:
        state: pretraining state dict (our names).
        decoder_state: the VQA model's current ``text_decoder.*`` entries (names and shapes to fill).

    Returns:
        ``text_decoder.*`` tensors to load.
    """
    loaded, mismatched = {}, []
    for source, target in _DECODER_SOURCES:
        for name, tensor in state.items():
            if not name.startswith(source):
                continue
            new_name = target + name[len(source):]
            if new_name not in decoder_state:
                continue
            if decoder_state[new_name].shape != tensor.shape:
                mismatched.append(new_name)
                continue
            loaded[new_name] = tensor
    if mismatched:
        logger.warning("answer decoder: %d weights keep their random init (shape differs from the pretrained fusion "
                       "layers, e.g. image width ≠ text width): %s", len(mismatched), ", ".join(mismatched[:4]))
    return loaded
