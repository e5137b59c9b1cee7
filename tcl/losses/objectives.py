"""The swappable contrastive objectives (TCL.md Part A §A.2): InfoNCE, L_Neg (debiased negatives), L_Pos.

Every contrastive term of TCL is a set of rows, each with one positive logit and N negative logits. All three
objectives depend on a row only through three statistics: the positive logit z_p = s_p / t, the log-sum-exp of the
negative logits, and N. They are computed here in log space, so nothing overflows at t = 0.001 and rows may have
65,536+ negatives: ``exp(s / t)`` is never formed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Objective = Literal["infonce", "debiased_neg", "debiased_pos"]
OBJECTIVES = ("infonce", "debiased_neg", "debiased_pos")
# Keeps log(1 − e^x) finite in the branch that torch.where discards (its gradient must not be NaN: inf · 0 is).
_LOG_BELOW_ONE = math.log1p(-1e-7)


@dataclass(frozen=True)
class ContrastiveObjective:
    """The swappable contrastive objective (TCL.md Part A §A.2) as one value: the three constants always travel
    together through every contrastive term, and a frozen group cannot be half-passed or changed on the way.

    Attributes:
        name: ``infonce``, ``debiased_neg`` (L_Neg) or ``debiased_pos`` (L_Pos).
        tau_plus: class prior τ⁺ of the debiased objectives (ignored by InfoNCE).
        include_self: ``debiased_pos`` only: whether P counts e_self (the thesis formula; the toy 2-D experiment in
            docs/BENCHMARKS.md aligns the modalities only without it).
    """

    name: Objective = "infonce"
    tau_plus: float = 0.1
    include_self: bool = True


# The default of every contrastive term: plain InfoNCE (τ⁺ and e_self do not enter it).
INFONCE = ContrastiveObjective()


def _log1m_exp(log_x: torch.Tensor) -> torch.Tensor:
    """log(1 − x) from log x, for x < 1; inputs at or above 0 are clamped (the caller discards those rows)."""
    return torch.log1p(-torch.exp(log_x.clamp(max=_LOG_BELOW_ONE)))


def objective_from_stats(pos_logit: torch.Tensor, neg_lse: torch.Tensor, num_neg: torch.Tensor | float,
                         temperature: torch.Tensor | float, objective: ContrastiveObjective = INFONCE) -> torch.Tensor:
    """Per-row loss from the row statistics.

    Args:
        pos_logit: [R] positive similarity divided by the temperature.
        neg_lse: [R] log-sum-exp of the negative logits (-inf for a row without negatives).
        num_neg: [R] (or scalar) number of negatives N of each row.
        temperature: t, used by the floors (whose value is N·e^{-1/t} and τ⁺·e^{-1/t}) and by e_self = e^{1/t}.
        objective: which objective, with its τ⁺ and e_self choice.

    Returns:
        [R] losses.
    """
    if not isinstance(objective, ContrastiveObjective):  # the loose string of earlier versions
        raise TypeError(f"objective must be a ContrastiveObjective, got {objective!r}: pass "
                        f"ContrastiveObjective({objective!r}, tau_plus=..., include_self=...)")
    if objective.name == "infonce":
        return torch.logaddexp(pos_logit, neg_lse) - pos_logit
    num_neg = torch.as_tensor(num_neg, dtype=pos_logit.dtype, device=pos_logit.device).clamp_min(1.0)
    inv_t = 1.0 / torch.as_tensor(temperature, dtype=pos_logit.dtype, device=pos_logit.device)
    if objective.name == "debiased_neg":
        return _debiased_neg(pos_logit, neg_lse, num_neg, inv_t, objective.tau_plus)
    if objective.name == "debiased_pos":
        return _debiased_pos(pos_logit, neg_lse, num_neg, inv_t, objective.tau_plus, objective.include_self)
    raise ValueError(f"unknown contrastive objective {objective.name!r}; use one of {', '.join(OBJECTIVES)}")


def _debiased_neg(pos_logit, neg_lse, num_neg, inv_t, tau_plus) -> torch.Tensor:
    """L_Neg: g = max((Σ_neg − τ⁺·N·e_p) / (1 − τ⁺), N·e^{−1/t}),  L = −log(e_p / (e_p + g))."""
    log_floor = torch.log(num_neg) - inv_t
    if tau_plus == 0:  # every e_j >= e^{-1/t}, so Σ_neg is above the floor: InfoNCE
        log_g = torch.maximum(neg_lse, log_floor)
    else:
        log_ratio = math.log(tau_plus) + torch.log(num_neg) + pos_logit - neg_lse  # log(τ⁺·N·e_p / Σ_neg)
        log_corrected = neg_lse + _log1m_exp(log_ratio) - math.log1p(-tau_plus)
        log_g = torch.where(log_ratio < 0, torch.maximum(log_corrected, log_floor), log_floor)
    return torch.logaddexp(pos_logit, log_g) - pos_logit


def _debiased_pos(pos_logit, neg_lse, num_neg, inv_t, tau_plus, include_self) -> torch.Tensor:
    """L_Pos: P = (Σ_neg + e_p + e_self)/(N + 2), P⁻ = Σ_neg / N, num = max(P − τ⁻·P⁻, τ⁺·e^{−1/t}),
    den = num + N·τ⁺·P⁻,  L = −log(num / den) = softplus(log(N·τ⁺·P⁻) − log num)."""
    terms = [neg_lse, pos_logit]
    if include_self:
        terms.append(inv_t.expand_as(pos_logit))
    log_p = torch.logsumexp(torch.stack(terms), dim=0) - torch.log(num_neg + len(terms) - 1)
    log_p_neg = neg_lse - torch.log(num_neg)
    log_ratio = math.log1p(-tau_plus) + log_p_neg - log_p  # log(τ⁻·P⁻ / P)
    log_difference = log_p + _log1m_exp(log_ratio)
    log_floor = math.log(tau_plus) - inv_t
    log_num = torch.where(log_ratio < 0, torch.maximum(log_difference, log_floor), log_floor)
    return F.softplus(torch.log(num_neg * tau_plus) + log_p_neg - log_num)


def row_statistics(logits: torch.Tensor, positive: torch.Tensor, exclude: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, int | torch.Tensor]:
    """Positive logit, log-sum-exp of the negatives, and N for rows whose negatives are all other columns except
    those ``exclude`` [B, M] marks (then N is per row)."""
    pos_logit = logits.gather(1, positive[:, None]).squeeze(1)
    not_negative = F.one_hot(positive, logits.shape[1]).bool()
    if exclude is not None:
        not_negative = not_negative | exclude
    neg_lse = torch.logsumexp(logits.masked_fill(not_negative, float("-inf")), dim=1)
    if exclude is None:
        return pos_logit, neg_lse, logits.shape[1] - 1
    return pos_logit, neg_lse, (~not_negative).sum(dim=1).to(logits.dtype)


def contrastive_loss(sim: torch.Tensor, positive: torch.Tensor, temperature: torch.Tensor | float,
                     objective: ContrastiveObjective = INFONCE, soft_targets: torch.Tensor | None = None,
                     alpha: float = 0.0, row_weights: torch.Tensor | None = None,
                     exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Mean contrastive loss over rows of cosine similarities (weighted by ``row_weights`` when given).

    Args:
        sim: [B, M] cosine similarities; column ``positive[b]`` is row b's positive, every other column a negative.
        positive: [B] long.
        temperature: t (tensor or float).
        objective: which objective, with its τ⁺ and e_self choice.
        soft_targets: optional [B, M] distributions (momentum distillation); the loss of a row becomes
            (1 − α)·objective + α·cross-entropy(soft_targets, softmax(sim / t)).
        alpha: distillation weight α.
        row_weights: optional [B] non-negative weights (e.g. UOTA's); the loss is Σ w_b·loss_b / Σ w_b.
        exclude: optional [B, M] bool: columns that are neither the positive nor a negative of the row (known false
            negatives, e.g. another copy of the same caption); they also get no distillation mass.
    """
    if sim.dim() != 2 or positive.shape != sim.shape[:1]:
        raise ValueError(f"sim must be [B, M] and positive [B]; got {tuple(sim.shape)} and {tuple(positive.shape)}")
    if sim.shape[1] < 2:
        raise ValueError("each row needs at least one negative column (M >= 2)")
    logits = sim.float() / temperature if sim.dtype in (torch.float16, torch.bfloat16) else sim / temperature
    loss = objective_from_stats(*row_statistics(logits, positive, exclude), temperature, objective)
    if soft_targets is not None and alpha > 0:
        soft, log_probs = soft_targets.to(logits.dtype), F.log_softmax(logits, dim=1)
        if exclude is not None:
            exclude = exclude & ~F.one_hot(positive, logits.shape[1]).bool()
            soft = soft.masked_fill(exclude, 0.0)
            soft = soft / soft.sum(dim=1, keepdim=True).clamp_min(1e-12)
            log_probs = F.log_softmax(logits.masked_fill(exclude, float("-inf")), dim=1).masked_fill(exclude, 0.0)
        distill = -(soft * log_probs).sum(dim=1)
        loss = (1.0 - alpha) * loss + alpha * distill
    if row_weights is not None:
        return (loss * row_weights).sum() / row_weights.sum().clamp_min(1e-12)
    return loss.mean()
