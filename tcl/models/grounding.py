"""Grounding (X-VLM's box prediction, not a TCL term; ``loss.grounding_weight``): the fusion encoder reads a phrase
naming ``loss.grounding_objects`` objects of the image ("large green square and small red circle") and a head
predicts their boxes, in the phrase's order.

It is a part of its own: the model owns a ``GroundingHead`` only when the term is on, the dataset gives the batch's
``grounding`` (phrases, boxes, valid rows, from ``data.pretrain_instances``), and the model runs the phrase through
its text and fusion encoders, pools it, and adds the head's loss to its total (docs/BENCHMARKS.md, "Which object,
where, next to what").
"""

from __future__ import annotations

import torch
from torch import nn

from tcl.losses.grounding import box_loss


class GroundingHead(nn.Sequential):
    """A two-layer MLP from a pooled fused phrase to 4 numbers per object (its state keys are those of the
    ``nn.Sequential`` it was before it became a part of its own)."""

    def __init__(self, hidden_size: int, objects: int):
        super().__init__(nn.Linear(hidden_size, 2 * hidden_size), nn.LayerNorm(2 * hidden_size), nn.GELU(),
                         nn.Linear(2 * hidden_size, 4 * objects))

    def boxes(self, pooled: torch.Tensor) -> torch.Tensor:
        """[B, N, 4] boxes (centre x, centre y, width, height, fractions of the image) from pooled states [B, D]."""
        return self(pooled).float().sigmoid().unflatten(-1, (-1, 4))

    @staticmethod
    def loss(boxes: torch.Tensor, grounding: dict[str, torch.Tensor]) -> torch.Tensor:
        """The box loss of predicted ``boxes`` [B, N, 4] against the batch's, over its valid objects."""
        return box_loss(boxes.flatten(0, 1), grounding["boxes"].flatten(0, 1), grounding["valid"].flatten())
