"""The TCL/ALBEF answer decoder (TCL.md Part B §4.1, §4.3, §4.4, §6.4).

A BERT-style decoder whose layers are causal self-attention → cross-attention to the question states of the fusion
encoder → feed-forward, with its own embeddings and a language-model head tied to them. It is trained with the
answer-weighted sequence NLL (optionally distilled from a momentum teacher) and answers by ranking the answer list:
the k candidates most likely by their first token are teacher-forced and scored by their full-sequence
log-likelihood (or TCL's score, which counts the first token twice).

Parameter names follow ALBEF's ``text_decoder`` (``bert.embeddings``, ``bert.encoder.layer.{j}``,
``cls.predictions``), so layer j is initialised from the pretrained fusion layer j and the embeddings and head from
the pretrained text embeddings and MLM head (``tcl.models.surgery.decoder_state_from_pretrain``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEmbeddings

from tcl.models.bert import FusionLayer, MLMHead, attention_mask_4d

RankScore = Literal["sequence", "tcl"]


@dataclass
class AnswerTargets:
    """Training answers of a batch, flattened: question b owns ``counts[b]`` consecutive rows.

    ``ids``/``mask`` are ``[CLS] a1 ... am [SEP] [PAD] ...`` of shape [N, La]; ``weights`` [N] are TCL's answer
    weights (count / annotators for VQA, 0.5 for Visual Genome); ``counts`` [B] sums to N.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    weights: torch.Tensor
    counts: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> AnswerTargets:
        return AnswerTargets(*(tensor.to(device, non_blocking=non_blocking)
                               for tensor in (self.ids, self.mask, self.weights, self.counts)))


def causal_mask(mask: torch.Tensor) -> torch.Tensor:
    """[N, L] padding mask → [N, 1, L, L] boolean mask: position t attends to non-padding positions ≤ t."""
    length = mask.shape[1]
    lower = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    return lower[None, None] & mask.bool()[:, None, None, :]


class AnswerDecoder(nn.Module):
    """ALBEF's ``text_decoder``: embeddings, causal layers cross-attending to the question states, tied LM head."""

    def __init__(self, config: BertConfig, num_layers: int):
        super().__init__()
        self.bert = nn.Module()
        self.bert.embeddings = BertEmbeddings(config)
        self.bert.encoder = nn.Module()
        # The fusion layer with a causal self-attention mask is exactly a decoder layer; its cross-attention reads the
        # question states (width = hidden size).
        self.bert.encoder.layer = nn.ModuleList(FusionLayer(config, config.hidden_size) for _ in range(num_layers))
        self.cls = MLMHead(config, self.bert.embeddings.word_embeddings)

    def forward(self, answer_ids: torch.Tensor, answer_mask: torch.Tensor, question_states: torch.Tensor,
                question_mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits [N, La, V] of answers teacher-forced against their questions' states [N, Lq, D]."""
        hidden = self.bert.embeddings(input_ids=answer_ids)
        self_mask = causal_mask(answer_mask)
        cross_mask = attention_mask_4d(question_mask)
        for layer in self.bert.encoder.layer:
            hidden = layer(hidden, self_mask, question_states, cross_mask)
        return self.cls(hidden)


def sequence_nll(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence NLL [N]: position t predicts token t+1, summed over the real tokens after [CLS] (incl. [SEP])."""
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    token_nll = -log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (token_nll * mask[:, 1:]).sum(dim=1)


def sequence_distillation(logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence cross-entropy [N] to the teacher's next-token distributions (softmax over the vocabulary, dim=-1:
    TCL's dim=1 bug is fixed, TCL.md Part A §A.1 (3))."""
    soft = F.softmax(teacher_logits[:, :-1].float(), dim=-1)
    token_ce = -(soft * F.log_softmax(logits[:, :-1].float(), dim=-1)).sum(dim=-1)
    return (token_ce * mask[:, 1:]).sum(dim=1)


def weighted_answer_loss(logits: torch.Tensor, targets: AnswerTargets, batch_size: int,
                         teacher_logits: torch.Tensor | None = None, alpha: float = 0.0) -> torch.Tensor:
    """TCL's VQA loss: Σ_answers weight · ((1 − α)·NLL + α·distillation) / questions."""
    per_answer = sequence_nll(logits, targets.ids, targets.mask)
    if teacher_logits is not None and alpha > 0:
        per_answer = (1 - alpha) * per_answer + alpha * sequence_distillation(logits, teacher_logits, targets.mask)
    return (targets.weights * per_answer).sum() / batch_size


@torch.no_grad()
def rank_candidates(decoder: AnswerDecoder, question_states: torch.Tensor, question_mask: torch.Tensor,
                    candidate_ids: torch.Tensor, candidate_mask: torch.Tensor, k: int,
                    score: RankScore = "sequence") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k answer ranking (TCL.md Part B §4.4).

    Step 1 decodes the start token once per question and keeps the k candidates whose first token is most likely;
    step 2 teacher-forces those k sequences and scores them by their log-likelihood (``sequence``), or by TCL's
    ``log p(first token) − NLL(sequence)`` (``tcl``, the first token counted twice).

    Args:
        question_states, question_mask: [B, Lq, D] fusion states and [B, Lq] mask.
        candidate_ids, candidate_mask: [A, La] the tokenised answer list (``[CLS] a [SEP]``).
        k: candidates kept per question (at most A).

    Returns:
        (indices [B, k] into the answer list, scores [B, k]), best first.
    """
    batch, num_answers = question_states.shape[0], candidate_ids.shape[0]
    k = min(k, num_answers)
    start = candidate_ids[:1, :1].expand(batch, 1)
    start_logits = decoder(start, torch.ones_like(start), question_states, question_mask)[:, 0]
    first_log_probs = F.log_softmax(start_logits.float(), dim=-1)[:, candidate_ids[:, 1]]  # [B, A]
    first, top = first_log_probs.topk(k, dim=1)
    ids, mask = candidate_ids[top].flatten(0, 1), candidate_mask[top].flatten(0, 1)  # [B·k, La]
    states = question_states.repeat_interleave(k, dim=0)
    states_mask = question_mask.repeat_interleave(k, dim=0)
    nll = sequence_nll(decoder(ids, mask, states, states_mask), ids, mask).view(batch, k)
    scores = first - nll if score == "tcl" else -nll
    scores, order = scores.sort(dim=1, descending=True)
    return top.gather(1, order), scores


# Pretraining names → decoder names (TCL.md Part B §6.4 in this project's naming).
