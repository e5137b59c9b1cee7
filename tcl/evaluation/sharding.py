"""An evaluation shared by the processes of a run.

Decoding and encoding the images is what an evaluation spends its time on, so each process holds every ``count``-th
image of the set (a strided slice: equal shares, also of a set sorted by size) and scores what belongs to its images;
its results are added up across the processes, one ``total`` (an all-reduce sum) per measure. Texts are tokenised by
every process (cheap), and the few outputs that need every image (the contrastive features) are put together the same
way. A process alone holds every image and ``total`` is the identity, so the numbers do not depend on the number of
processes. No process waits for another's whole evaluation, and none decodes images it does not score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass(frozen=True)
class Shard:
    """This process's share: the images whose position in the set is ``index`` modulo ``count``; ``total`` sums a
    tensor over the processes (every process calls it at the same point, with a tensor of the same shape)."""

    index: int = 0
    count: int = 1
    total: Callable[[torch.Tensor], torch.Tensor] = _identity

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} is not within 0..{self.count - 1}")

    def takes(self, position: int) -> bool:
        """Whether this process holds the image at ``position`` of the set."""
        return position % self.count == self.index

    def assemble(self, rows: torch.Tensor, positions: torch.Tensor, size: int) -> torch.Tensor:
        """A [size, ...] tensor of every process's ``rows``, each at its ``positions`` (the rows of this process's
        images put together with every other process's)."""
        full = rows.new_zeros((size, *rows.shape[1:]))
        full[positions.to(rows.device)] = rows
        return self.total(full)


ALONE = Shard()
