"""How well a pretrained model finds the object a phrase names (the grounding term's own signal): the share of
phrases whose predicted box overlaps the true one with IoU ≥ 0.5 (the usual referring-expression accuracy)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import box_convert, box_iou


@dataclass
class GroundingSet:
    """Images and phrases naming one object each; ``image_index[p]`` is phrase p's image, ``boxes[p]`` its object's
    box (centre x, centre y, width, height, fractions of the image)."""

    images: torch.Tensor  # [I, 3, H, W]
    input_ids: torch.Tensor  # [P, L]
    attention_mask: torch.Tensor  # [P, L]
    image_index: torch.Tensor  # [P] long
    boxes: torch.Tensor  # [P, 4]
    phrases: list[str]
    image_ids: list[int]  # [I], the annotation file's ids of the images


def paired_iou(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[P] IoU of each predicted box with its own target, both [P, 4] as (centre x, centre y, width, height)."""
    return box_iou(*(box_convert(boxes.float(), "cxcywh", "xyxy") for boxes in (predicted, target))).diagonal()


@torch.no_grad()
def evaluate_grounding(model, data: GroundingSet, batch_size: int = 128) -> dict[str, float]:
    """``grounding_iou50`` (% of phrases found with IoU ≥ 0.5) and ``grounding_mean_iou`` (%) of a model with a
    grounding head (``loss.grounding_weight`` > 0)."""
    model.eval()
    device = next(model.parameters()).device
    image_embeds = torch.cat([model.encode_image(data.images[i:i + batch_size].to(device))[0]
                              for i in range(0, len(data.images), batch_size)])
    predicted = torch.cat([model.predict_boxes(image_embeds, data.input_ids[i:i + batch_size].to(device),
                                               data.attention_mask[i:i + batch_size].to(device),
                                               data.image_index[i:i + batch_size].to(device)).cpu()
                           for i in range(0, len(data.input_ids), batch_size)])
    iou = paired_iou(predicted, data.boxes)
    return {"grounding_iou50": 100.0 * (iou >= 0.5).float().mean().item(),
            "grounding_mean_iou": 100.0 * iou.mean().item(), "grounding_phrases": len(data.phrases)}
