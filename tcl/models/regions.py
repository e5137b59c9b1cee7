"""Region classification (not a TCL term; ``loss.region_class_weight``): a linear head reads the image tower's tokens
inside each object's box and names its category, each of its attribute classes and, with
``loss.region_position_bins``, the column and row band of the view its centre lies in.

TCL's image tower starts from ImageNet labels; trained from scratch on the generated world, every TCL term is won by
colour first and the tower never learns shapes. This part gives it the words of each object (docs/BENCHMARKS.md,
"Region classification"). It is a part of its own: the model owns a ``RegionHead`` only when the term is on, the
dataset gives the batch's ``regions`` (boxes and labels, from ``data.pretrain_instances``), and the model adds the
head's loss to its total.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tcl.config import LossConfig
from tcl.models.pooling import pool_boxes


class RegionHead(nn.Linear):
    """The region head: one linear layer over the pooled tokens of a box (its state keys are ``weight``/``bias``,
    those of the ``nn.Linear`` it was before it became a part of its own)."""

    def __init__(self, vision_width: int, loss: LossConfig):
        position_classes = 2 if loss.region_position_bins else 0
        class_sizes = [len(loss.region_categories), *(len(words) for words in loss.region_attributes),
                       *[loss.region_position_bins] * position_classes]
        super().__init__(vision_width, sum(class_sizes))
        self.class_sizes = class_sizes
        self.attribute_classes = len(loss.region_attributes)
        self.position_bins = loss.region_position_bins

    def classify(self, image_embeds: torch.Tensor, boxes: torch.Tensor) -> list[torch.Tensor]:
        """Logits [B, R, n] of the boxes [B, R, 4] (``pool_boxes``) from the image tokens alone, one tensor per class
        of words: the categories, then each attribute class, then (with position bins) the column and the row band
        (``targets``)."""
        return list(self(pool_boxes(image_embeds, boxes)).float().split(self.class_sizes, dim=-1))

    def targets(self, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The labels [B, R, C] the head is scored against: the objects' word labels, then (with position bins) the
        column and row band of each box's centre in the view."""
        if not self.position_bins:
            return labels
        bands = (boxes[..., :2] * self.position_bins).long().clamp(0, self.position_bins - 1)  # column, row
        return torch.cat([labels, bands.masked_fill(labels[..., :1] < 0, -100)], dim=-1)

    def loss(self, image_embeds: torch.Tensor, regions: dict[str, torch.Tensor] | None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The cross-entropy summed over the classes of words (each the mean over the batch's objects that have a
        label in it), and the head's accuracies as diagnostics: categories, attributes, position bands."""
        if regions is None:
            raise ValueError("loss.region_class_weight > 0 needs the batch's 'regions' (boxes and categories: "
                             "data.pretrain_instances)")
        loss, accuracies = image_embeds.sum() * 0.0, []
        targets = self.targets(regions["boxes"], regions["labels"])
        for k, logits in enumerate(self.classify(image_embeds, regions["boxes"])):
            labels = targets[..., k]
            real = (labels >= 0).float()  # masks, not boolean indexing: shapes that never wait for the device
            count = real.sum().clamp_min(1.0)
            per_object = F.cross_entropy(logits.flatten(0, 1), labels.flatten().clamp_min(0), reduction="none")
            loss = loss + (per_object * real.flatten()).sum() / count
            accuracies.append(((logits.argmax(dim=-1) == labels).float() * real).sum().detach() / count)
        return loss, self._diagnostics(accuracies)

    def _diagnostics(self, accuracies: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        diagnostics = {"region_accuracy": accuracies[0]}
        attributes = accuracies[1:1 + self.attribute_classes]
        if attributes:
            diagnostics["region_attribute_accuracy"] = torch.stack(attributes).mean()
        if self.position_bins:
            diagnostics["region_position_accuracy"] = torch.stack(accuracies[1 + self.attribute_classes:]).mean()
        return diagnostics
