"""The VQA model with either answer head (TCL.md Part A §A.1 (8), Part B §4).

The image encoder, text encoder and fusion encoder keep the pretraining model's names, so a pretraining checkpoint
loads by name (``load_pretrained_encoders``). Two heads, chosen by ``vqa.head``:

- ``classifier``: an MLP over the fused [CLS] state trained with binary cross-entropy on the official soft scores;
  one forward pass per question at test time (Part B §4.7).
- ``decoder``: TCL/ALBEF's answer decoder over the fused question states (``tcl.models.answer_decoder``), initialised
  from the pretrained fusion layers, trained with the answer-weighted sequence NLL distilled from a momentum copy of
  the whole model, answering by top-k ranking over the answer list (Part B §4.1-§4.4).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tcl.config import Config, ModelConfig, section_from_dict
from tcl.errors import TclError
from tcl.models.answer_decoder import AnswerDecoder, AnswerTargets, RankScore, rank_candidates, weighted_answer_loss
from tcl.models.pooling import pool_text
from tcl.models.bert import FusionEncoder, TextEncoder, bert_config, init_bert_weights
from tcl.models.convert import read_official_vqa
from tcl.models.momentum import MomentumEncoders
from tcl.models.saving import (CONFIG_FILE, config_field, load_weights, on_cpu, read_model_config, resolve_model_dir,
                               save_weights, vocab_size_of, write_model_config)
from tcl.models.surgery import load_strict, pretrain_to_vqa
from tcl.models.vision import build_vision_encoder

# Modules with a momentum copy when the decoder head distils (TCL: visual_encoder_m, text_encoder_m, text_decoder_m).
DECODER_MOMENTUM_MODULES = ("vision_encoder", "text_encoder", "fusion_encoder", "text_decoder")


@dataclass
class VQAOutput:
    """Answer logits [B, A]; with targets, the loss and its terms."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)


class AnswerClassifier(nn.Module):
    """MLP over the fused [CLS]: D → hidden → LayerNorm → GELU → answers."""

    def __init__(self, width: int, hidden: int, num_answers: int):
        super().__init__()
        self.dense = nn.Linear(width, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.out = nn.Linear(hidden, num_answers)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.norm(self.dense(cls))))


class TCLVQAModel(nn.Module):
    """Image encoder → text encoder → fusion encoder → answer head.

    Args:
        model: architecture (the same section as pretraining; ``image_size`` may differ).
        vocab_size: tokenizer vocabulary size.
        num_answers: size of the answer vocabulary.
        classifier_hidden: hidden width of the classifier head (default 2 x hidden size).
        head: ``classifier`` or ``decoder``.
        distill: (decoder head) keep a momentum copy of the model as distillation teacher.
    """

    def __init__(self, model: ModelConfig, vocab_size: int, num_answers: int, classifier_hidden: int | None = None,
                 head: str = "classifier", distill: bool = False):
        super().__init__()
        if head not in ("classifier", "decoder"):
            raise ValueError(f"unknown VQA head {head!r}; use 'classifier' or 'decoder'")
        self.model_config, self.head, self.num_answers = model, head, num_answers
        config = bert_config(model, vocab_size)
        self.vision_encoder = build_vision_encoder(model)
        self.text_encoder = TextEncoder(config, model.fusion_layer)
        self.fusion_encoder = FusionEncoder(config, model.num_hidden_layers - model.fusion_layer, model.vision_width)
        modules: list[nn.Module] = [self.text_encoder, self.fusion_encoder]
        if head == "classifier":
            self.answer_head = AnswerClassifier(model.hidden_size, classifier_hidden or 2 * model.hidden_size,
                                                num_answers)
            modules.append(self.answer_head)
        else:
            self.text_decoder = AnswerDecoder(config, model.num_hidden_layers - model.fusion_layer)
            # The LM decoder is the (tied) word-embedding matrix: initialise everything but it.
            modules += [self.text_decoder.bert, self.text_decoder.cls.predictions.transform]
        for module in modules:
            init_bert_weights(module, model.init_scheme)
        distilling = distill and head == "decoder"
        self.vision_frozen = False  # freeze_vision()
        self.momentum = MomentumEncoders(self._momentum_sources(), model.momentum, model.teacher_dropout) \
            if distilling else None

    def _momentum_sources(self) -> nn.ModuleDict:
        return nn.ModuleDict({name: getattr(self, name) for name in DECODER_MOMENTUM_MODULES})

    def question_states(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        encoders: nn.Module | None = None, image_index: torch.Tensor | None = None) -> torch.Tensor:
        """Fusion-encoder states [B, L, D] of the questions attending to their images (``encoders``: another set of
        encoders with the same names, e.g. the momentum copy). ``image_index`` [B] names each question's row of
        ``image`` when questions share images (each image is then encoded, and its keys and values for the fusion
        encoder projected, once); None: one image per question."""
        encoders = encoders or self
        image_embeds = encoders.vision_encoder.forward_features(image)
        text = encoders.text_encoder(input_ids, attention_mask)
        return encoders.fusion_encoder(text, attention_mask, image_embeds, image_index=image_index)

    def fused_state(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    image_index: torch.Tensor | None = None) -> torch.Tensor:
        """The fused question state the classifier reads: [CLS] (TCL) or the mean of the question's tokens, as
        ``model.feature_pool`` says (the state pretraining's ITM head was trained on)."""
        states = self.question_states(image, input_ids, attention_mask, image_index=image_index)
        return pool_text(states, attention_mask, self.model_config.feature_pool)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                targets: torch.Tensor | AnswerTargets | None = None, alpha: float = 0.0,
                step_boundary: bool = True, image_index: torch.Tensor | None = None) -> VQAOutput:
        """Classifier head: logits [B, A] and, with soft-score ``targets`` [B, A], the BCE loss. Decoder head:
        the weighted sequence loss of ``targets`` (an ``AnswerTargets``); use ``answer_scores`` to answer.
        ``image_index``: see ``question_states``."""
        if self.head == "decoder":
            if not isinstance(targets, AnswerTargets):
                raise TypeError("the decoder head trains on AnswerTargets; call answer_scores() to answer questions")
            return self._decoder_loss(image, input_ids, attention_mask, targets, alpha, step_boundary, image_index)
        logits = self.answer_head(self.fused_state(image, input_ids, attention_mask, image_index))
        if targets is None:
            return VQAOutput(logits)
        # BCE summed over answers (mean over questions): the usual scaling for soft-score VQA classifiers, whose
        # per-answer mean would otherwise shrink the gradient by the vocabulary size.
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="sum") / logits.shape[0]
        return VQAOutput(logits, loss, {"bce": loss.detach()})

    def _decoder_loss(self, image, input_ids, attention_mask, targets: AnswerTargets, alpha: float,
                      step_boundary: bool, image_index: torch.Tensor | None) -> VQAOutput:
        states = self.question_states(image, input_ids, attention_mask, image_index=image_index)
        # One copy of the question states per answer of that question.
        states_rep = states.repeat_interleave(targets.counts, dim=0)
        mask_rep = attention_mask.repeat_interleave(targets.counts, dim=0)
        logits = self.text_decoder(targets.ids, targets.mask, states_rep, mask_rep)
        teacher_logits = None
        if self.momentum is not None and alpha > 0:
            teacher_logits = self._teacher_logits(image, input_ids, attention_mask, targets, step_boundary,
                                                  image_index)
        loss = weighted_answer_loss(logits, targets, input_ids.shape[0], teacher_logits, alpha)
        return VQAOutput(logits.new_zeros(0), loss, {"answer_nll": loss.detach()})

    @torch.no_grad()
    def _teacher_logits(self, image, input_ids, attention_mask, targets: AnswerTargets, step_boundary: bool,
                        image_index: torch.Tensor | None):
        """The momentum model's answer logits on the same image (updated first, once per optimizer step)."""
        if step_boundary and self.training:
            self.momentum.update(self._momentum_sources())
        teacher = self.momentum.models
        states = self.question_states(image, input_ids, attention_mask, teacher, image_index)
        return teacher.text_decoder(targets.ids, targets.mask, states.repeat_interleave(targets.counts, dim=0),
                                    attention_mask.repeat_interleave(targets.counts, dim=0))

    @torch.no_grad()
    def answer_scores(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      candidates: tuple[torch.Tensor, torch.Tensor] | None = None, k: int = 128,
                      rank_score: RankScore = "sequence", image_index: torch.Tensor | None = None) -> torch.Tensor:
        """A score [B, A] for every answer of the list; higher is better, argmax is the prediction.

        Classifier: the logits. Decoder: the ranking scores of the top ``k`` candidates, −inf elsewhere;
        ``candidates`` is the tokenised answer list (ids, mask) [A, La]. ``image_index``: see ``question_states``.
        """
        if self.head == "classifier":
            return self.answer_head(self.fused_state(image, input_ids, attention_mask, image_index)).float()
        if candidates is None:
            raise ValueError("the decoder head ranks the tokenised answer list: pass candidates=(ids, mask)")
        states = self.question_states(image, input_ids, attention_mask, image_index=image_index)
        top, scores = rank_candidates(self.text_decoder, states, attention_mask, *candidates, k, rank_score)
        full = scores.new_full((input_ids.shape[0], candidates[0].shape[0]), float("-inf"))
        return full.scatter_(1, top, scores)

    def freeze_vision(self) -> None:
        """Keeps the image encoder fixed: no gradients, and in eval mode whatever ``train()`` says, so that its
        BatchNorm statistics (the convolutional stem's) and dropout do not move it either."""
        for parameter in self.vision_encoder.parameters():
            parameter.requires_grad_(False)
        self.vision_frozen = True
        self.vision_encoder.eval()

    def train(self, mode: bool = True) -> "TCLVQAModel":
        super().train(mode)
        if self.vision_frozen:
            self.vision_encoder.eval()
        return self

    def load_pretrained_encoders(self, state: dict[str, torch.Tensor], source: str = "the pretraining checkpoint"
                                 ) -> list[str]:
        """Loads the encoders (and, for the decoder head, the decoder: TCL.md Part B §6.4) from a pretraining state
        dict, resampling position embeddings to this resolution; the momentum copy then starts equal to them.

        Returns:
            The names left at their initial values (the classifier head; decoder weights whose shapes differ).

        Raises:
            WeightsMismatch: an encoder weight is missing or has another shape.
        """
        decoder = ({k: v for k, v in self.state_dict().items() if k.startswith("text_decoder.")}
                   if self.head == "decoder" else None)
        encoders = pretrain_to_vqa(state, self.vision_encoder.patch_embed.num_patches, decoder)
        left = load_strict(self, encoders, source, "Use the model section of the pretraining run (its config.yaml).",
                           allow_missing=("answer_head.", "text_decoder.", "momentum."))
        self.sync_momentum()
        return [name for name in left if not name.startswith("momentum.")]

    def sync_momentum(self) -> None:
        """Makes the momentum copy equal to the online weights (after loading them)."""
        if self.momentum is not None:
            self.momentum.copy_from(self._momentum_sources())

    # -- saving and loading ----------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes ``config.json`` and ``model.safetensors`` (without the momentum teacher, a training-only part)."""
        directory = Path(directory)
        hidden = self.answer_head.dense.out_features if self.head == "classifier" else None
        write_model_config(directory, {"architecture": type(self).__name__, "model": asdict(self.model_config),
                                       "vocab_size": vocab_size_of(self), "num_answers": self.num_answers,
                                       "head": self.head, "classifier_hidden": hidden})
        save_weights(self, directory, skip_prefixes=("momentum.",))

    @classmethod
    def from_official(cls, path: str | Path, num_answers: int, image_size: int | None = None, trust: bool = False
                      ) -> TCLVQAModel:
        """A decoder-head model from an official VQA fine-tune, or from a pretraining checkpoint initialised as TCL
        does before fine-tuning (TCL.md Part B §6.4: the decoder from the fusion layers); CPU, eval mode."""
        config, state, fine_tuned = read_official_vqa(path, image_size, trust)
        model = cls(config, config.vocab_size, num_answers, head="decoder")
        if fine_tuned:
            load_strict(model, state, str(path), "The converted weights do not fit the model read from the shapes.")
        else:
            left = model.load_pretrained_encoders(state, str(path))
            if left:
                raise TclError(f"{path}: {len(left)} answer-decoder weights have no pretrained source ({left[:3]}).")
        return on_cpu(model)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, num_answers: int | None = None) -> TCLVQAModel:
        """A model saved by ``save_pretrained`` (local folder or hub name), or an official TCL/ALBEF ``.pth`` converted
        on the fly to the decoder head (then ``num_answers``, the length of its answer list, is needed); on the CPU
        in eval mode."""
        if Path(name_or_path).is_file():
            if num_answers is None:
                raise ValueError("loading an official .pth needs num_answers (the length of its answer list)")
            return cls.from_official(name_or_path, num_answers)
        directory = resolve_model_dir(name_or_path)
        payload = read_model_config(directory, cls.__name__)
        model_config = section_from_dict(ModelConfig, config_field(payload, "model", directory),
                                         str(directory / CONFIG_FILE), "model.")
        model = cls(model_config, config_field(payload, "vocab_size", directory),
                    config_field(payload, "num_answers", directory), payload.get("classifier_hidden"),
                    head=config_field(payload, "head", directory))
        load_weights(model, directory)
        return on_cpu(model)


def vqa_model_from_config(config: Config, vocab_size: int, num_answers: int, training: bool = False) -> TCLVQAModel:
    """A randomly initialised VQA model of the config's architecture and head; the decoder head gets its momentum
    teacher only for training with distillation (``loss.distill`` and ``loss.alpha`` > 0)."""
    distill = training and config.vqa.head == "decoder" and config.loss.distill and config.loss.alpha > 0
    return TCLVQAModel(config.model, config.model.vocab_size or vocab_size, num_answers, config.vqa.classifier_hidden,
                       head=config.vqa.head, distill=distill)
