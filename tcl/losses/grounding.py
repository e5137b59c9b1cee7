"""The grounding term's box loss (X-VLM, Zeng et al. 2022): L1 plus generalised IoU between predicted and true boxes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert


def box_loss(predicted: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the ``valid`` rows of L1 (summed over the four coordinates) plus 1 − GIoU.

    Args:
        predicted, target: [B, 4] boxes as (centre x, centre y, width, height) in fractions of the image.
        valid: [B] bool, the rows that have a true box.

    Returns:
        A scalar; 0 (still attached to ``predicted``) when no row is valid.
    """
    # Masks, not boolean indexing: shapes that never wait for the device. Rows without a box are scored against the
    # prediction itself (finite, no gradient through the target) and weighted 0.
    weights = valid.float()
    predicted = predicted.float()
    target = torch.where(valid[:, None], target.float(), predicted.detach())
    l1 = F.l1_loss(predicted, target, reduction="none").sum(dim=1)
    giou = _giou_loss(box_convert(predicted, "cxcywh", "xyxy"), box_convert(target, "cxcywh", "xyxy"))
    return ((l1 + giou) * weights).sum() / weights.sum().clamp_min(1.0)


def _giou_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 − GIoU of paired (x1, y1, x2, y2) boxes, the formula of torchvision's ``generalized_box_iou_loss`` without its
    checks, which wait for the device on every call."""
    inter = ((torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
             * (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0))
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    hull = ((torch.maximum(a[:, 2], b[:, 2]) - torch.minimum(a[:, 0], b[:, 0]))
            * (torch.maximum(a[:, 3], b[:, 3]) - torch.minimum(a[:, 1], b[:, 1])))
    return 1 - inter / (union + eps) + (hull - union) / (hull + eps)
