"""The TCL pretraining model (TCL.md Part B §1.7): encoders, projections, momentum copies, queues and all losses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn
from transformers.models.bert.modeling_bert import BertLayer

from tcl.config import LossConfig, ModelConfig, section_from_dict
from tcl.losses.contrastive_terms import MomentumTargets, cma_loss, imc_loss, lmi_loss, pool_image_regions
from tcl.losses.diagnostics import alignment, uniformity
from tcl.losses.itm import hard_negative_weights, itm_loss, sample_hard_negatives
from tcl.losses.mlm import mask_tokens, mlm_loss
from tcl.losses.objectives import ContrastiveObjective
from tcl.losses.uota import pair_weights
from tcl.models.convert import read_official_pretrain
from tcl.models.grounding import GroundingHead
from tcl.models.bert import FusionEncoder, FusionLayer, MLMHead, TextEncoder, bert_config, init_bert_weights
from tcl.models.pooling import pool_image, pool_text
from tcl.models.momentum import FeatureQueue, GatherFn, KeyQueue, MomentumEncoders, identity_gather
from tcl.models.regions import RegionHead
from tcl.models.saving import (CONFIG_FILE, config_field, load_weights, on_cpu, read_model_config, resolve_model_dir,
                               save_weights, write_model_config)
from tcl.models.surgery import load_strict
from tcl.models.vision import build_vision_encoder
from tcl.models.word_swap import WordSwapper

# Modules that have a momentum copy, in a fixed order (TCL: no copy of itm_head or temp).
MOMENTUM_MODULES = ("vision_encoder", "vision_proj", "text_encoder", "fusion_encoder", "mlm_head", "text_proj")
CONTRASTIVE_TERMS = ("i2t", "t2i", "i2i", "t2t", "lmi_image", "lmi_text")
TEMPERATURE_RANGE = (0.001, 0.5)
# The layers ``compile_encoders`` compiles: timm's ViT blocks, transformers' BERT layers, our fusion layers.
TRANSFORMER_LAYERS = (Block, BertLayer, FusionLayer)


@dataclass(frozen=True)
class SpecialTokens:
    pad: int = 0
    cls: int = 2
    mask: int = 4


@dataclass
class PretrainOutput:
    """The total loss (with gradient), each term detached, and the alignment/uniformity diagnostics."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class _Teacher:
    image_embeds: torch.Tensor
    image_feat: torch.Tensor
    image_local: torch.Tensor
    text_feat: torch.Tensor
    text_local: torch.Tensor
    image_feat_all: torch.Tensor
    text_feat_all: torch.Tensor


def caption_keys(input_ids: torch.Tensor) -> torch.Tensor:
    """[B] int64 hash of each row's token ids: equal for identical captions, distinct otherwise (but by chance)."""
    keys = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    for column in input_ids.long().unbind(dim=1):
        keys = (keys * 1_000_003 + column + 1) % 2_305_843_009_213_693_951  # the Mersenne prime 2^61 − 1
    return keys


class TCLPretrainModel(nn.Module):
    """TCL: CMA + IMC + LMI contrastive terms with a swappable objective, ITM with hard negatives, MLM.

    Args:
        model: architecture.
        loss: loss weights and objective.
        vocab_size: tokenizer vocabulary size.
        special: ids of [PAD], [CLS], [MASK].
        swap_word_ids: token ids of ``loss.swap_word_classes`` (the content words MLM masks more often with
            ``loss.mlm_content_probability``; the model is built without them for inference).
    """

    def __init__(self, model: ModelConfig, loss: LossConfig, vocab_size: int, special: SpecialTokens = SpecialTokens(),
                 swap_word_ids: list[list[int]] | None = None):
        super().__init__()
        self.model_config, self.loss_config, self.special = model, loss, special
        self.vocab_size = vocab_size
        config = bert_config(model, vocab_size)
        self.vision_encoder = build_vision_encoder(model)
        self.text_encoder = TextEncoder(config, model.fusion_layer)
        self.fusion_encoder = FusionEncoder(config, model.num_hidden_layers - model.fusion_layer, model.vision_width)
        self.mlm_head = MLMHead(config, self.text_encoder.embeddings.word_embeddings)
        # The MLM decoder is the word-embedding matrix (tied): only its transform is initialised here.
        for module in (self.text_encoder, self.fusion_encoder, self.mlm_head.predictions.transform):
            init_bert_weights(module, model.init_scheme)
        self.vision_proj = nn.Linear(model.vision_width, model.embed_dim)
        self.text_proj = nn.Linear(model.hidden_size, model.embed_dim)
        self.itm_head = nn.Linear(model.hidden_size, 2)
        # Shape [1] rather than a 0-d scalar: DeepSpeed cannot broadcast 0-d parameters (the official checkpoint's
        # scalar is reshaped on import).
        self.temp = nn.Parameter(torch.full((1,), float(model.temp)))
        self.momentum = MomentumEncoders(self.online_modules(), model.momentum, model.teacher_dropout)
        self.image_queue = FeatureQueue(model.embed_dim, model.queue_size)
        self.text_queue = FeatureQueue(model.embed_dim, model.queue_size)
        if loss.skip_identical_captions:  # only then: the paper models keep TCL's (and the checkpoints') state keys
            self.caption_queue = KeyQueue(model.queue_size)
        self.word_swapper = WordSwapper(swap_word_ids, vocab_size) if swap_word_ids else None
        # The auxiliary objectives, parts of their own (tcl.models.grounding, tcl.models.regions); each exists only
        # when its term is on, so the paper models keep TCL's state keys.
        self.grounding_head = GroundingHead(model.hidden_size, loss.grounding_objects) \
            if loss.grounding_weight > 0 else None
        self.region_head = RegionHead(model.vision_width, loss) if loss.region_class_weight > 0 else None
        self.gather: GatherFn = identity_gather

    # -- public surface ------------------------------------------------------------------------------------------

    def online_modules(self) -> nn.ModuleDict:
        """The online modules that have momentum copies, in the order the copies keep."""
        return nn.ModuleDict({name: getattr(self, name) for name in MOMENTUM_MODULES})

    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens [B, 1 + P, Dv] and the normalised global feature [B, d]."""
        embeds = self.vision_encoder.forward_features(image)
        return embeds, F.normalize(self.vision_proj(pool_image(embeds, self.model_config.feature_pool)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Text-encoder states [B, L, D] and the normalised global feature [B, d]."""
        embeds = self.text_encoder(input_ids, attention_mask)
        return embeds, F.normalize(self.text_proj(pool_text(embeds, attention_mask, self.model_config.feature_pool)),
                                   dim=-1)

    def fuse(self, text_embeds: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor,
             image_index: torch.Tensor | None = None) -> torch.Tensor:
        """Fusion-encoder states [B, L, D] of text states cross-attending to image tokens; ``image_index`` [B]: the
        row of ``image_embeds`` each text reads, when texts share images (None: row i reads image i)."""
        return self.fusion_encoder(text_embeds, attention_mask, image_embeds, image_index=image_index)

    def compile_encoders(self, **options) -> None:
        """``torch.compile`` of every transformer layer of the image, text and fusion encoders and of their momentum
        copies, in place (``nn.Module.compile``: parameter names, and so checkpoints, are unchanged; the layers of a
        tower share one compiled graph). Losses, queues and the EMA stay eager. ``options`` go to ``torch.compile``."""
        for module in self.modules():
            if isinstance(module, TRANSFORMER_LAYERS):
                module.compile(**options)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.vision_encoder.set_grad_checkpointing(enabled)
        self.text_encoder.grad_checkpointing = enabled
        self.fusion_encoder.grad_checkpointing = enabled

    @torch.no_grad()
    def image_text_scores(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image against every text: cosine similarity of the projected features and the ITM probability that
        the pair matches, both [B_images, B_texts] (what retrieval ranks and re-ranks by)."""
        image_embeds, image_feat = self.encode_image(image)
        text_embeds, text_feat = self.encode_text(input_ids, attention_mask)
        num_images, num_texts = image.shape[0], input_ids.shape[0]
        image_index = torch.arange(num_images, device=image_embeds.device).repeat_interleave(num_texts)
        logits = self.itm_logits(text_embeds.repeat(num_images, 1, 1), attention_mask.repeat(num_images, 1),
                                 image_embeds, image_index)
        itm = logits.float().softmax(dim=-1)[:, 1].view(num_images, num_texts)
        return (image_feat @ text_feat.T).float(), itm

    def itm_logits(self, text_embeds: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor,
                   image_index: torch.Tensor | None = None) -> torch.Tensor:
        """ITM logits [B, 2] (column 1: the pair matches) of (text, image) rows, from the fused state pooled as
        ``model.feature_pool`` says; ``image_index`` as in ``fuse``."""
        fused = self.fuse(text_embeds, attention_mask, image_embeds, image_index)
        return self.itm_head(pool_text(fused, attention_mask, self.model_config.feature_pool))

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        self.temp.clamp_(*TEMPERATURE_RANGE)

    # -- training forward ----------------------------------------------------------------------------------------

    def forward(self, image: torch.Tensor, image_aug: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, alpha: float = 0.0, step_boundary: bool = True,
                grounding: dict[str, torch.Tensor] | None = None,
                regions: dict[str, torch.Tensor] | None = None) -> PretrainOutput:
        """All TCL losses for one batch.

        Args:
            image, image_aug: [B, 3, H, W] two augmented views (the second feeds the momentum encoders).
            input_ids, attention_mask: [B, L] captions (``[CLS] w1 ... wn``).
            alpha: distillation weight (ramped by the trainer).
            step_boundary: whether this batch starts an optimizer step: the momentum update and the enqueue happen
                only then, so gradient accumulation advances them once per optimizer step.
            grounding: the collated batch's ``grounding`` (phrases, boxes, valid rows), needed by
                ``loss.grounding_weight``.
            regions: the collated batch's ``regions`` (boxes [B, R, 4] in the first view, labels [B, R, C]), needed by
                ``loss.region_class_weight``.
        """
        self.clamp_temperature()
        temp, cfg = self.temp, self.loss_config
        image_embeds, image_feat = self.encode_image(image)
        text_embeds, text_feat = self.encode_text(input_ids, attention_mask)
        teacher = self._teacher(image_aug, input_ids, attention_mask, step_boundary)
        distill_alpha = alpha if cfg.distill else 0.0
        # Built per call, not in __init__: loss_config is a plain (mutable) dataclass, and the group costs nothing.
        objective = ContrastiveObjective(cfg.objective, cfg.tau_plus, cfg.include_self)
        keys = caption_keys(input_ids) if cfg.skip_identical_captions else None
        copies = self._queued_matches(keys, "caption_queue")  # [B, B + Q]: pairs holding a copy of the row's caption
        batch = input_ids.shape[0]
        terms = {}
        distill = MomentumTargets(teacher.image_feat, teacher.text_feat, distill_alpha)
        terms["i2t"], terms["t2i"] = cma_loss(image_feat, text_feat, teacher.image_feat_all, teacher.text_feat_all,
                                              temp, objective, distill=distill, exclude=copies)
        image_weights = pair_weights(image_feat, teacher.image_feat, cfg.uota_tau) if cfg.uota else None
        terms["i2i"], terms["t2t"] = imc_loss(image_feat, text_feat, teacher.image_feat_all, teacher.text_feat_all,
                                              temp, objective, image_weights=image_weights, text_exclude=copies)
        terms["lmi_image"] = lmi_loss(image_feat, teacher.image_local, None, temp, objective)
        terms["lmi_text"] = lmi_loss(text_feat, teacher.text_local, attention_mask[:, 1:], temp, objective)
        if step_boundary:
            self.image_queue.enqueue(self.gather(teacher.image_feat))
            self.text_queue.enqueue(self.gather(teacher.text_feat))
            if keys is not None:
                self.caption_queue.enqueue(self.gather(keys))
        sim_i2t = image_feat @ teacher.text_feat.T / temp
        sim_t2i = text_feat @ teacher.image_feat.T / temp
        if cfg.itm_negatives == "random":  # equal weights: every other sample of the batch is as likely
            sim_i2t, sim_t2i = torch.zeros_like(sim_i2t), torch.zeros_like(sim_t2i)
        same_text = None if copies is None else copies[:, :batch]
        terms["itm"] = self._itm(image_embeds, text_embeds, attention_mask, sim_i2t, sim_t2i, same_text)
        terms["mlm"] = self._mlm(input_ids, attention_mask, image_embeds, teacher.image_embeds, distill_alpha)
        diagnostics = {"alignment": alignment(image_feat, text_feat).detach(),
                       "uniformity_image": uniformity(image_feat).detach(),
                       "uniformity_text": uniformity(text_feat).detach(), "temperature": temp.detach()[0]}
        if self.grounding_head is not None:
            terms["grounding"] = self._grounding(image_embeds, grounding)
        if self.region_head is not None:
            terms["regions"], region_diagnostics = self.region_head.loss(image_embeds, regions)
            diagnostics.update(region_diagnostics)
        total = self._total(terms)
        return PretrainOutput(total, {name: value.detach() for name, value in terms.items()}, diagnostics)

    def _queued_matches(self, keys: torch.Tensor | None, queue: str) -> torch.Tensor | None:
        """[B, B + Q] bool: batch and queue entries whose key (in ``queue``) is the row's, the row itself included;
        None when ``keys`` is None (the option that keeps them is off)."""
        if keys is None:
            return None
        return keys[:, None] == torch.cat([keys, getattr(self, queue).keys])[None, :]

    def _total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.loss_config
        intra_modal = (cfg.imc_weight * (terms["i2i"] + terms["t2t"])
                       + cfg.lmi_weight * (terms["lmi_image"] + terms["lmi_text"]))
        contrastive = (cfg.cma_weight * (terms["i2t"] + terms["t2i"]) + intra_modal) / len(CONTRASTIVE_TERMS)
        total = contrastive + cfg.itm_weight * terms["itm"] + cfg.mlm_weight * terms["mlm"]
        if "grounding" in terms:
            total = total + cfg.grounding_weight * terms["grounding"]
        if "regions" in terms:
            total = total + cfg.region_class_weight * terms["regions"]
        return total

    def predict_boxes(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      image_index: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N, 4] boxes (centre x, centre y, width, height, fractions of the image) of the N objects
        (``loss.grounding_objects``) each phrase names in its image, in the phrase's order (``image_index`` as in
        ``fuse``), from the fused state pooled as ``model.feature_pool`` says."""
        fused = self.fuse(self.text_encoder(input_ids, attention_mask), attention_mask, image_embeds, image_index)
        return self.grounding_head.boxes(pool_text(fused, attention_mask, self.model_config.feature_pool))

    def _grounding(self, image_embeds: torch.Tensor, grounding: dict[str, torch.Tensor] | None) -> torch.Tensor:
        if grounding is None:
            raise ValueError("loss.grounding_weight > 0 needs the batch's 'grounding' (phrases and boxes: "
                             "data.pretrain_instances)")
        boxes = self.predict_boxes(image_embeds, grounding["input_ids"], grounding["attention_mask"])
        return self.grounding_head.loss(boxes, grounding)

    @torch.no_grad()
    def _teacher(self, image_aug, input_ids, attention_mask, step_boundary: bool) -> _Teacher:
        """Momentum features: EMA update first (online weights of the last optimizer step), then the teacher pass."""
        if step_boundary and self.training:
            self.momentum.update(self.online_modules())
        m = self.momentum
        image_embeds = m["vision_encoder"].forward_features(image_aug)
        pool = self.model_config.feature_pool
        image_feat = F.normalize(m["vision_proj"](pool_image(image_embeds, pool)), dim=-1)
        image_local = pool_image_regions(F.normalize(m["vision_proj"](image_embeds[:, 1:]), dim=-1),
                                         tcl_pretrain_kernel=self.loss_config.lmi_pooling == "tcl_pretrain")
        text_out = m["text_encoder"](input_ids, attention_mask)
        text_feat = F.normalize(m["text_proj"](pool_text(text_out, attention_mask, pool)), dim=-1)
        text_local = F.normalize(m["text_proj"](text_out[:, 1:]), dim=-1)
        return _Teacher(image_embeds, image_feat, image_local, text_feat, text_local,
                        torch.cat([image_feat, self.image_queue.features().to(image_feat.dtype)]),
                        torch.cat([text_feat, self.text_queue.features().to(text_feat.dtype)]))

    def _itm(self, image_embeds, text_embeds, attention_mask, sim_i2t, sim_t2i, same_text=None
             ) -> torch.Tensor:
        """Positive pairs plus, per image and per text, one hard negative drawn by similarity (with
        ``loss.itm_negative_pairs: half``, a negative text for the first half of the images and a negative image for
        the second half of the texts); ``same_text`` [B, B] marks pairs of samples that match anyway (identical
        captions), which are never drawn as each other's negatives."""
        batch = image_embeds.shape[0]
        own = torch.arange(batch, device=image_embeds.device)
        if batch == 1:  # no other sample to contrast with
            return itm_loss(self.itm_logits(text_embeds, attention_mask, image_embeds), 1)
        with torch.no_grad():
            weights_t2i, weights_i2t = hard_negative_weights(sim_t2i), hard_negative_weights(sim_i2t)
            if same_text is not None:
                weights_t2i, weights_i2t = weights_t2i.masked_fill(same_text, 0.0), weights_i2t.masked_fill(same_text,
                                                                                                            0.0)
            negative_image = sample_hard_negatives(weights_t2i)
            negative_text = sample_hard_negatives(weights_i2t)
        negative_texts, negative_masks = text_embeds[negative_text], attention_mask[negative_text]
        # Positives first, then the negatives; one fusion pass over all of them, every row naming its image, so that
        # each image's keys and values are projected once (the same maths as TCL's two passes).
        if self.loss_config.itm_negative_pairs == "half":
            # Negative rows [0, B/2): image i with its negative text; [B/2, B): text j with its negative image.
            half = batch // 2
            texts = torch.cat([text_embeds, negative_texts[:half], text_embeds[half:]])
            masks = torch.cat([attention_mask, negative_masks[:half], attention_mask[half:]])
            images = torch.cat([own, own[:half], negative_image[half:]])
        else:
            texts = torch.cat([text_embeds, text_embeds, negative_texts])
            masks = torch.cat([attention_mask, attention_mask, negative_masks])
            images = torch.cat([own, negative_image, own])
        return itm_loss(self.itm_logits(texts, masks, image_embeds, images), batch)

    def _mlm(self, input_ids, attention_mask, image_embeds, image_embeds_m, alpha: float) -> torch.Tensor:
        """MLM on a re-encoded masked copy of the text, scored at every position (``mlm_loss``)."""
        content_probability = self.loss_config.mlm_content_probability
        content = None
        # A model built without the word ids (for inference, or a test) keeps BERT's masking; the engine always
        # builds with them (tcl.engine.pretrain.build_model).
        if content_probability > 0 and self.word_swapper is not None:
            content = self.word_swapper.swappable(input_ids, attention_mask)
        masked_ids, labels = mask_tokens(input_ids, self.vocab_size, self.special.mask, self.special.pad,
                                         self.special.cls, self.model_config.mlm_probability,
                                         content=content, content_probability=content_probability)
        hidden = self.fuse(self.text_encoder(masked_ids, attention_mask), attention_mask, image_embeds)
        logits = self.mlm_head(hidden)
        teacher_logits = None
        if alpha > 0:
            with torch.no_grad():
                m = self.momentum
                hidden_m = m["fusion_encoder"](m["text_encoder"](masked_ids, attention_mask), attention_mask,
                                               image_embeds_m)
                teacher_logits = m["mlm_head"](hidden_m)
        return mlm_loss(logits, labels, teacher_logits, alpha)

    # -- saving and loading ----------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes ``config.json`` and ``model.safetensors`` (momentum encoders and queues included, so pretraining
        can continue from the folder)."""
        directory = Path(directory)
        write_model_config(directory, {"architecture": type(self).__name__, "model": asdict(self.model_config),
                                       "loss": asdict(self.loss_config), "vocab_size": self.vocab_size,
                                       "special_tokens": asdict(self.special)})
        save_weights(self, directory)

    @classmethod
    def from_official(cls, path: str | Path, image_size: int | None = None, trust: bool = False) -> TCLPretrainModel:
        """An official TCL / ALBEF pretraining checkpoint, loaded strictly, on the CPU in eval mode (the loss settings,
        which the checkpoint does not store, are TCL's defaults)."""
        config, state = read_official_pretrain(path, image_size, trust)
        model = cls(config, LossConfig(), config.vocab_size)
        load_strict(model, state, str(path), "The converted weights do not fit the model read from the shapes.")
        return on_cpu(model)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> TCLPretrainModel:
        """A model saved by ``save_pretrained`` or ``tcl convert`` (local folder or hub name), or an official TCL/ALBEF
        ``.pth`` checkpoint converted on the fly; on the CPU in eval mode."""
        if Path(name_or_path).is_file():
            return cls.from_official(name_or_path)
        directory = resolve_model_dir(name_or_path)
        payload = read_model_config(directory, cls.__name__)
        source = str(directory / CONFIG_FILE)
        model_config = section_from_dict(ModelConfig, config_field(payload, "model", directory), source, "model.")
        loss_config = section_from_dict(LossConfig, payload.get("loss", {}), source, "loss.")
        special = SpecialTokens(**payload.get("special_tokens", {}))
        model = cls(model_config, loss_config, config_field(payload, "vocab_size", directory), special)
        load_weights(model, directory)
        return on_cpu(model)
