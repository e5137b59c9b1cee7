"""How well a pretrained model finds the object a phrase names (the grounding term's own signal): the share of
phrases whose predicted box overlaps the true one with IoU ≥ 0.5 (the usual referring-expression accuracy)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import box_convert, box_iou

from tcl.evaluation.sharding import ALONE, Shard


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
def evaluate_grounding(model, data: GroundingSet, batch_size: int = 128, shard: Shard = ALONE) -> dict[str, float]:
    """``grounding_iou50`` (% of phrases found with IoU ≥ 0.5) and ``grounding_mean_iou`` (%) of a model with a
    grounding head (``loss.grounding_weight`` > 0); with a ``shard``, over the phrases of every process's images."""
    model.eval()
    device = next(model.parameters()).device
    image_embeds = [model.encode_image(data.images[i:i + batch_size].to(device))[0]
                    for i in range(0, len(data.images), batch_size)]
    iou = torch.zeros(0, device=device)
    if image_embeds:
        image_embeds = torch.cat(image_embeds)
        predicted = torch.cat([model.predict_boxes(image_embeds, data.input_ids[i:i + batch_size].to(device),
                                                   data.attention_mask[i:i + batch_size].to(device),
                                                   data.image_index[i:i + batch_size].to(device))[:, 0]
                               for i in range(0, len(data.input_ids), batch_size)])  # a phrase names one object
        iou = paired_iou(predicted, data.boxes.to(device))
    sums = torch.stack([(iou >= 0.5).sum().double(), iou.sum().double(), iou.new_tensor(len(iou)).double()])
    found, total_iou, phrases = shard.total(sums).tolist()
    share = 100.0 / max(phrases, 1)
    return {"grounding_iou50": found * share, "grounding_mean_iou": total_iou * share,
            "grounding_phrases": int(phrases)}
