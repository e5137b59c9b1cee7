"""AdamW with explicit parameter groups, and the per-iteration warm-up + cosine learning-rate schedule.

Grouping: weights (matrices, embeddings, conv kernels, ``pos_embed``, ``cls_token``) are decayed; biases, LayerNorm
parameters and the temperature (every parameter with fewer than 2 dimensions) are not. TCL's own grouping
(TCL.md Part B §3.6) exempts only 1-D parameters and names ending in ``.bias`` — so it decays the 0-D temperature as
well — and keeps the LayerNorm exemption; the only difference is the temperature.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from tcl.config import TrainConfig

logger = logging.getLogger(__name__)


def parameter_groups(model: nn.Module, weight_decay: float, decay_temperature: bool = False) -> list[dict]:
    """Two AdamW groups over the trainable parameters: decayed (ndim >= 2) and not decayed (biases, norms, scalars);
    ``decay_temperature`` puts the contrastive temperature with the decayed ones, as TCL's grouping does."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        exempt = (parameter.ndim < 2 or name.endswith(".bias")) and not (decay_temperature and name == "temp")
        (no_decay if exempt else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``parameter_groups``: fused when ``train.fused_adamw`` and the build supports it on the parameters'
    device (measured 3x cheaper than foreach on the tiny model's CPU step: docs/BENCHMARKS.md), else foreach."""
    groups = parameter_groups(model, train.weight_decay, train.decay_temperature)
    settings = dict(lr=train.lr, betas=(0.9, 0.999), eps=1e-8)
    if train.fused_adamw:
        try:
            return torch.optim.AdamW(groups, fused=True, **settings)
        except (RuntimeError, TypeError) as error:  # no fused kernel for this device / dtype in this build
            logger.info("fused AdamW is not available here (%s); using the foreach implementation", error)
    return torch.optim.AdamW(groups, foreach=True, **settings)


def learning_rate(step: int, total_steps: int, train: TrainConfig, steps_per_epoch: int | None = None) -> float:
    """Linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr``: per step
    (``train.lr_schedule: iteration``), or, as TCL's code, held for each epoch at the cosine of the epochs completed,
    lr(e) = min_lr + (lr − min_lr)·(1 + cos(π·e / epochs)) / 2 (``epoch``; needs ``steps_per_epoch``)."""
    if step < train.warmup_steps:
        return train.warmup_lr + (train.lr - train.warmup_lr) * step / max(train.warmup_steps, 1)
    if train.lr_schedule == "epoch":
        progress = (step // max(steps_per_epoch or total_steps, 1)) / max(train.epochs, 1)
    else:
        progress = (step - train.warmup_steps) / max(total_steps - train.warmup_steps, 1)
    return train.min_lr + 0.5 * (train.lr - train.min_lr) * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, train: TrainConfig,
                    steps_per_epoch: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimizer step (the schedule's length does not depend on ``max_steps``)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate(step, total_steps, train, steps_per_epoch) / train.lr)


def alpha_at(step: int, steps_per_epoch: int, alpha: float) -> float:
    """TCL's distillation ramp: linear from 0 to ``alpha`` over the first epoch, constant afterwards."""
    return alpha * min(1.0, step / max(steps_per_epoch, 1))
