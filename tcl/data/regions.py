"""The region classification term's data: per sample, every object the first view still holds with its labels; per
batch, padded boxes and labels (the head and loss live in ``tcl.models.regions``)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from tcl.data.coco import BoxedObject
from tcl.data.transforms import Crop, ViewBox, box_in_crop


class RegionTargets:
    """Gives a sample's ``"regions"``: (box in the view, labels) of each object the crop did not cut off.

    Args:
        classes: the term's classes of words, in the head's order: the categories, then any attribute classes.
    """

    def __init__(self, classes: Sequence[Sequence[str]]):
        self.classes = classes

    def __call__(self, objects: list[BoxedObject], crop: Crop) -> dict[str, Any]:
        in_view = [(box_in_crop(list(o.box), crop), region_labels(o, self.classes)) for o in objects]
        return {"regions": [(box, labels) for box, labels in in_view if box is not None]}


def region_labels(obj: BoxedObject, classes: Sequence[Sequence[str]]) -> tuple[int, ...]:
    """An object's label in each class of words: the first class holds the categories (the object's must be
    there), the others attributes (-100, ignored, when the object has none of a class's words)."""
    categories, *attribute_classes = classes
    labels = [list(categories).index(obj.category)]
    for words in attribute_classes:
        labels.append(next((k for k, word in enumerate(words) if word in obj.attributes), -100))
    return tuple(labels)


def collate_regions(regions: list[list[tuple[ViewBox, tuple[int, ...]]]]) -> dict[str, torch.Tensor]:
    """The region classification term's boxes ``[B, R, 4]`` (centre x, centre y, width, height in fractions of the
    view) and labels ``[B, R, C]`` (``region_labels``, C classes), R the most objects of any row; padding rows have
    labels -100 (ignored)."""
    most = max((len(row) for row in regions), default=0)
    classes = max((len(labels) for row in regions for _, labels in row), default=1)
    boxes = torch.zeros(len(regions), most, 4)
    labels = torch.full((len(regions), most, classes), -100, dtype=torch.long)
    for b, row in enumerate(regions):
        for r, (box, row_labels) in enumerate(row):
            boxes[b, r], labels[b, r] = torch.tensor(box), torch.tensor(row_labels)
    return {"boxes": boxes, "labels": labels}
