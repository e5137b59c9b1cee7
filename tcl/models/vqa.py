"""The VQA model with the classifier answer head (TCL.md Part A §A.1 (8), Part B §4.7).

The image encoder, text encoder and fusion encoder keep the pretraining model's names, so a pretraining checkpoint
loads by name (``load_pretrained_encoders``); the answer head is an MLP over the fused [CLS] state trained with
binary cross-entropy on the official soft scores, and answers with one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tcl.config import ModelConfig
from tcl.models.bert import FusionEncoder, TextEncoder, bert_config, init_bert_weights
from tcl.models.vision import build_vision_encoder, resample_pos_embed

# Prefixes of a pretraining state dict that the VQA model uses; everything else (momentum copies, queues,
# projections, ITM/MLM heads, temperature) is pretraining-only.
ENCODER_PREFIXES = ("vision_encoder.", "text_encoder.", "fusion_encoder.")


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
    """Image encoder → text encoder → fusion encoder → answer classifier.

    Args:
        model: architecture (the same section as pretraining; ``image_size`` may differ).
        vocab_size: tokenizer vocabulary size.
        num_answers: size of the answer vocabulary.
        classifier_hidden: hidden width of the head (default 2 x hidden size).
    """

    def __init__(self, model: ModelConfig, vocab_size: int, num_answers: int, classifier_hidden: int | None = None):
        super().__init__()
        self.model_config = model
        config = bert_config(model, vocab_size)
        self.vision_encoder = build_vision_encoder(model)
        self.text_encoder = TextEncoder(config, model.fusion_layer)
        self.fusion_encoder = FusionEncoder(config, model.num_hidden_layers - model.fusion_layer, model.vision_width)
        self.answer_head = AnswerClassifier(model.hidden_size, classifier_hidden or 2 * model.hidden_size, num_answers)
        for module in (self.text_encoder, self.fusion_encoder, self.answer_head):
            init_bert_weights(module, xavier=model.init_scheme == "xavier")

    def fused_cls(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image_embeds = self.vision_encoder.forward_features(image)
        text = self.text_encoder(input_ids, attention_mask)
        return self.fusion_encoder(text, attention_mask, image_embeds)[:, 0]

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                targets: torch.Tensor | None = None) -> VQAOutput:
        logits = self.answer_head(self.fused_cls(image, input_ids, attention_mask))
        if targets is None:
            return VQAOutput(logits)
        # BCE summed over answers (mean over questions): the usual scaling for soft-score VQA classifiers, whose
        # per-answer mean would otherwise shrink the gradient by the vocabulary size.
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="sum") / logits.shape[0]
        return VQAOutput(logits, loss, {"bce": loss.detach()})

    def freeze_vision(self) -> None:
        for parameter in self.vision_encoder.parameters():
            parameter.requires_grad_(False)

    def load_pretrained_encoders(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Loads the encoders from a pretraining state dict, resampling position embeddings to this resolution.

        Returns:
            The names left at their initial values (the answer head).

        Raises:
            ValueError: an encoder weight is missing or has another shape.
        """
        encoders = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}
        key = "vision_encoder.pos_embed"
        if key in encoders:
            encoders[key] = resample_pos_embed(encoders[key], self.vision_encoder.patch_embed.num_patches)
        missing, unexpected = self.load_state_dict(encoders, strict=False)
        not_head = [name for name in missing if not name.startswith("answer_head.")]
        if not_head or unexpected:
            raise ValueError(f"the pretraining checkpoint does not fit this model: missing {not_head[:5]}, "
                             f"unexpected {unexpected[:5]}. Use the model section of the pretraining run.")
        return missing
