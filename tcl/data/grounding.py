"""The grounding term's data: per sample, a phrase naming some of the image's objects and their boxes in the view;
per batch, the tokenised phrases and the boxes (the head and loss live in ``tcl.models.grounding``)."""

from __future__ import annotations

from typing import Any

import torch

from tcl.data.coco import BoxedObject, referring_phrases
from tcl.data.tokenizer import TclTokenizer
from tcl.data.transforms import Crop, box_in_crop
from tcl.text_cleaning import pre_caption


class GroundingTargets:
    """Draws a sample's ``"ground_phrase"`` and ``"ground_boxes"`` from its objects and the first view's crop.

    Args:
        objects_per_phrase: how many different objects a phrase names ("A and B"), each with its box.
        max_words: the phrase's length cap in words.
    """

    def __init__(self, objects_per_phrase: int = 1, max_words: int = 30):
        self.objects_per_phrase = objects_per_phrase
        self.max_words = max_words

    def __call__(self, objects: list[BoxedObject], crop: Crop) -> dict[str, Any]:
        """Up to ``objects_per_phrase`` different objects drawn at random (torch's global RNG, seeded per sample)
        among those a phrase names alone, their phrases joined by "and" and their boxes in the view, in that order
        (``ground_boxes``: None for a place no object fills; phrase "" and no box when no object can be named alone or
        the crop cut the first one off)."""
        named = [(k, found) for k in range(len(objects)) if (found := referring_phrases(objects, k))]
        phrases, boxes = [], []
        while named and len(boxes) < self.objects_per_phrase:
            k, found = named.pop(int(torch.randint(len(named), ())))
            phrase, box = found[int(torch.randint(len(found), ()))], box_in_crop(list(objects[k].box), crop)
            if box is None and not boxes:
                break
            if box is not None:
                phrases.append(phrase)
                boxes.append(box)
        boxes += [None] * (self.objects_per_phrase - len(boxes))
        phrase = pre_caption(" and ".join(phrases), self.max_words) if phrases else ""
        return {"ground_phrase": phrase, "ground_boxes": boxes}


def collate_grounding(samples: list[dict[str, Any]], tokenizer: TclTokenizer, max_length: int
                      ) -> dict[str, torch.Tensor]:
    """The grounding term's phrases ``[B, L]`` and target boxes ``[B, N, 4]`` (centre x, centre y, width, height in
    fractions of the view; N objects per phrase), with ``valid`` [B, N]: the boxes that exist (the others are
    ignored)."""
    phrases = tokenizer.encode_texts([s["ground_phrase"] for s in samples], max_length)
    boxes = torch.tensor([[box or (0.0, 0.0, 0.0, 0.0) for box in s["ground_boxes"]] for s in samples],
                         dtype=torch.float32)
    return {"input_ids": phrases.input_ids, "attention_mask": phrases.attention_mask, "boxes": boxes,
            "valid": torch.tensor([[box is not None for box in s["ground_boxes"]] for s in samples])}
