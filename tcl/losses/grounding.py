"""The grounding term's box loss (X-VLM, Zeng et al. 2022): L1 plus generalised IoU between predicted and true boxes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou_loss


def box_loss(predicted: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the ``valid`` rows of L1 (summed over the four coordinates) plus 1 − GIoU.

    Args:
        predicted, target: [B, 4] boxes as (centre x, centre y, width, height) in fractions of the image.
        valid: [B] bool, the rows that have a true box.

    Returns:
        A scalar; 0 (still attached to ``predicted``) when no row is valid.
    """
    if not bool(valid.any()):
        return predicted.sum() * 0.0
    predicted, target = predicted[valid].float(), target[valid].float()
    l1 = F.l1_loss(predicted, target, reduction="none").sum(dim=1)
    giou = generalized_box_iou_loss(box_convert(predicted, "cxcywh", "xyxy"), box_convert(target, "cxcywh", "xyxy"),
                                    reduction="none")
    return (l1 + giou).mean()
