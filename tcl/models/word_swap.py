"""Captions with one content word swapped for another of its class ("a red circle" → "a red square").

Such a caption differs from the true one only where the image has to be looked at, so it is a negative that colour
counts or caption length cannot give away: NegCLIP's swapped-word negatives (Yuksekgonul et al., 2023), here on
token ids so that the swap happens in the forward pass on whatever batch arrives. Used by the attribute-binding
probe of ``tcl.evaluation.retrieval``; ``swappable`` also names the content words MLM masks more often.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class WordSwapper(nn.Module):
    """Swaps one word of each caption for another word of the same class.

    Args:
        word_classes: token ids of interchangeable words, e.g. [[red, green, ...], [circle, square, ...]]; each class
            needs two or more words and a word may belong to one class only.
        vocab_size: size of the vocabulary the ids come from.
    """

    def __init__(self, word_classes: Sequence[Sequence[int]], vocab_size: int):
        super().__init__()
        classes = [list(dict.fromkeys(int(i) for i in words)) for words in word_classes]
        if not classes or any(len(words) < 2 for words in classes):
            raise ValueError(f"every word class needs at least two words, got {classes}")
        class_of = torch.full((vocab_size,), -1, dtype=torch.long)
        place_in_class = torch.zeros(vocab_size, dtype=torch.long)
        members = torch.full((len(classes), max(map(len, classes))), -1, dtype=torch.long)
        for index, words in enumerate(classes):
            if (class_of[words] >= 0).any():
                raise ValueError(f"word class {index} shares words with an earlier class: {words}")
            class_of[words] = index
            place_in_class[words] = torch.arange(len(words))
            members[index, :len(words)] = torch.tensor(words)
        # Not part of the state dict: derived from the config and the tokenizer, rebuilt with the model.
        self.register_buffer("class_of", class_of, persistent=False)
        self.register_buffer("place_in_class", place_in_class, persistent=False)
        self.register_buffer("members", members, persistent=False)
        self.register_buffer("class_sizes", torch.tensor([len(words) for words in classes]), persistent=False)

    def swappable(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L] bool: the positions holding a word of some class (padding and the [CLS] column excluded)."""
        found = (self.class_of[input_ids] >= 0) & attention_mask.bool()
        found[:, 0] = False
        return found

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The captions with one randomly chosen class word each replaced by a random other word of its class, and
        [B] bool: which rows changed (rows without a class word come back as they are)."""
        candidates = self.swappable(input_ids, attention_mask)
        draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
        position = draw.masked_fill(~candidates, -1.0).argmax(dim=1)
        changed = candidates.any(dim=1)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        word = input_ids[rows, position]
        word_class = self.class_of[word].clamp_min(0)
        sizes = self.class_sizes[word_class]
        # A uniform pick among the other words of the class: draw from size − 1 places, skip the word's own.
        pick = (torch.rand(word.shape, generator=generator, device=word.device) * (sizes - 1)).long()
        pick = pick + (pick >= self.place_in_class[word]).long()
        swapped = input_ids.clone()
        swapped[rows[changed], position[changed]] = self.members[word_class, pick][changed]
        return swapped, changed
