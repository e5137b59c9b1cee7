"""Masked language modelling with momentum distillation (TCL.md Part B §3.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def mask_tokens(input_ids: torch.Tensor, vocab_size: int, mask_id: int, pad_id: int, cls_id: int,
                probability: float = 0.15, generator: torch.Generator | None = None,
                content: torch.Tensor | None = None, content_probability: float = 0.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: each token (never [PAD] or [CLS]) is chosen with ``probability``; of the chosen, 80 % become
    [MASK], 10 % a random id from the whole vocabulary, 10 % stay. Returns (masked ids, labels with -100 elsewhere).

    ``content`` ([B, L] bool) marks positions that are chosen with ``content_probability`` besides (content-word
    masking); without it the draws, and so the masks of a seeded generator, are BERT's exactly.
    """
    device = input_ids.device

    def draw(p: float) -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=device) < p

    chosen = draw(probability)
    if content is not None and content_probability > 0:
        chosen = chosen | (content & draw(content_probability))
    chosen = chosen & (input_ids != pad_id) & (input_ids != cls_id)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    to_mask = chosen & draw(0.8)
    to_random = chosen & ~to_mask & draw(0.5)
    masked = input_ids.masked_fill(to_mask, mask_id)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device)
    return torch.where(to_random, random_ids, masked), labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None,
             alpha: float = 0.0) -> torch.Tensor:
    """(1 − α)·CE + α·KD over the labelled tokens, KD = −Σ_v softmax(teacher)_v · log_softmax(student)_v.

    ``logits`` [..., V] and ``labels`` [...]: every position is scored and the unlabelled ones weigh zero, as the
    official code does; the shapes never depend on how many tokens were masked, so nothing waits for the device to
    count them. The softmaxes run over the vocabulary (dim=-1): the upstream dim=1 bug is not reproduced. Zero
    labelled tokens give a zero loss rather than NaN.
    """
    flat_labels = labels.reshape(-1)
    weights = (flat_labels != IGNORE).float()
    log_probs = F.log_softmax(logits.reshape(-1, logits.shape[-1]).float(), dim=-1)
    per_token = F.nll_loss(log_probs, flat_labels, ignore_index=IGNORE, reduction="none")
    if teacher_logits is not None and alpha > 0:
        teacher = F.softmax(teacher_logits.reshape(-1, logits.shape[-1]).float(), dim=-1)
        per_token = (1.0 - alpha) * per_token - alpha * (teacher * log_probs).sum(dim=-1)
    return (per_token * weights).sum() / weights.sum().clamp_min(1.0)
