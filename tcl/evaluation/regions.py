"""How well a pretrained image tower names the objects of held-out images (the region classification term's own
signal): the accuracy of the region head in each class of words, categories first."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tcl.evaluation.sharding import ALONE, Shard


@dataclass
class RegionSet:
    """Images with their objects: ``boxes[i, r]`` (centre x, centre y, width, height, fractions of the image) and
    ``labels[i, r, c]`` (label in class c, ``region_labels``; -100 for padding or an unlabelled attribute)."""

    images: torch.Tensor  # [I, 3, H, W]
    boxes: torch.Tensor  # [I, R, 4]
    labels: torch.Tensor  # [I, R, C] long
    image_ids: list[int]  # [I], the annotation file's ids of the images


@torch.no_grad()
def evaluate_regions(model, data: RegionSet, batch_size: int = 128, shard: Shard = ALONE) -> dict[str, float]:
    """``region_category_accuracy`` (%) and, with attribute classes, ``region_attribute_accuracy`` (%, over every
    labelled attribute of every object) of a model with a region head (``loss.region_class_weight`` > 0); with a
    ``shard``, over every process's images."""
    model.eval()
    device = next(model.parameters()).device
    head = model.region_head
    classes = len(head.class_sizes)
    right = torch.zeros(classes, device=device)
    counted = torch.zeros(classes, device=device)
    for i in range(0, len(data.images), batch_size):
        embeds = model.encode_image(data.images[i:i + batch_size].to(device))[0]
        boxes, labels = data.boxes[i:i + batch_size].to(device), data.labels[i:i + batch_size].to(device)
        targets = head.targets(boxes, labels)  # the word labels, then the position bands
        logits = head.classify(embeds, boxes)
        for k, part in enumerate(logits):
            truth = targets[..., k]
            real = truth >= 0
            right[k] += (part.argmax(dim=-1) == truth)[real].sum()
            counted[k] += real.sum()
    right, counted = shard.total(right), shard.total(counted)
    results = {"region_category_accuracy": 100.0 * (right[0] / counted[0].clamp_min(1)).item(),
               "region_objects": int(counted[0])}
    attributes = slice(1, data.labels.shape[-1])  # the word classes after the categories; then the position bands
    for name, part in (("region_attribute_accuracy", attributes), ("region_position_accuracy",
                                                                    slice(attributes.stop, classes))):
        if counted[part].numel():
            results[name] = 100.0 * (right[part].sum() / counted[part].sum().clamp_min(1)).item()
    return results
