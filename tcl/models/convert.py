"""Import of the official TCL / ALBEF checkpoints (TCL.md Part A §A.1 (1), Part B §6).

One rename table maps the official names to ours: ``visual_encoder.*`` is timm's ViT; BERT layers
``0..fusion_layer-1`` become the text encoder and the rest (with ``crossattention``) the fusion encoder; the MLM head
keeps its tying; ``*_m`` momentum copies go under ``momentum.models.``; the queues and their shared pointer become
our two ``FeatureQueue`` buffers. The architecture (widths, depths, fusion layer, vocabulary, queue) is read from the
tensor shapes, so TCL and ALBEF checkpoints (same key set) at any size convert without a config.

Foreign ``.pth`` files are unpickled with ``weights_only=True``; a file that needs code execution is refused unless
the caller explicitly trusts it. Keys that are neither mapped nor known to be redundant fail the conversion.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import torch

from tcl.config import LossConfig, ModelConfig
from tcl.errors import TclError
from tcl.models.vision import resample_pos_embed

# Official prefix → ours, for the online modules; the momentum copy adds "_m" to the official module name and
# "momentum.models." in front of ours. The BERT layers are split separately (``_split_layer``).
MODULE_RENAMES = (("visual_encoder", "vision_encoder"), ("vision_proj", "vision_proj"), ("text_proj", "text_proj"))
BERT_RENAMES = ((".bert.embeddings.", "text_encoder.embeddings."), (".cls.predictions.", "mlm_head.predictions."))
LAYER = re.compile(r"^(?:bert\.)?encoder\.layer\.(\d+)\.(.*)$")
# Official keys with no counterpart by design: a constant buffer and an alias of the MLM bias.
REDUNDANT = re.compile(r"(^|\.)embeddings\.position_ids$|cls\.predictions\.decoder\.bias$")
TRUST_HINT = "pass --trust-checkpoint (Python: trust=True) only if you trust where the file comes from"


def read_foreign_checkpoint(path: str | Path, trust: bool = False, hint: str = TRUST_HINT) -> dict[str, torch.Tensor]:
    """The state dict of an official ``.pth`` (its ``model`` entry, or the file itself if it is a state dict).

    ``hint`` says how to opt in when the file is refused (the caller's own option).

    Raises:
        TclError: the file is missing, is not a checkpoint, or needs code execution to unpickle and ``trust`` is off.
    """
    path = Path(path)
    if not path.is_file():
        raise TclError(f"{path}: checkpoint file not found.")
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


def load_official_pretrain(path: str | Path, image_size: int | None = None, trust: bool = False):
    """A ``TCLPretrainModel`` with the weights of an official pretraining checkpoint (loaded strictly; the loss
    settings, which the checkpoint does not store, are TCL's defaults)."""
    from tcl.models.pretrain import TCLPretrainModel

    state = read_foreign_checkpoint(path, trust)
    if is_vqa_checkpoint(state):
        raise TclError(f"{path}: a VQA fine-tune, not a pretraining checkpoint; convert it with --task vqa.")
    config = infer_model_config(state, image_size)
    model = TCLPretrainModel(config, LossConfig(), config.vocab_size)
    _load_strictly(model, convert_pretrain_state(state, config), path)
    return model.eval()


def load_official_vqa(path: str | Path, num_answers: int, image_size: int | None = None, trust: bool = False):
    """A decoder-head ``TCLVQAModel`` from an official VQA fine-tune, or from a pretraining checkpoint initialised as
    TCL does before fine-tuning (TCL.md Part B §6.4: the decoder from the fusion layers)."""
    from tcl.models.vqa import TCLVQAModel

    state = read_foreign_checkpoint(path, trust)
    config = infer_model_config(state, image_size)
    model = TCLVQAModel(config, config.vocab_size, num_answers, head="decoder")
    if is_vqa_checkpoint(state):
        _load_strictly(model, convert_vqa_state(state, config), path)
    else:
        left = model.load_pretrained_encoders(convert_pretrain_state(state, config))
        if left:
            raise TclError(f"{path}: {len(left)} answer-decoder weights have no pretrained source ({left[:3]}).")
    return model.eval()


def _load_strictly(model, state: dict[str, torch.Tensor], path) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TclError(f"{path}: the converted weights do not fit the model read from its shapes: missing "
                       f"{missing[:5]}, unexpected {unexpected[:5]}.")
