"""What every dataset of the project shares: an Arrow table of rows, the bad-sample policy, per-key seeding."""

from __future__ import annotations

import abc
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Literal

import datasets
from torch.utils.data import Dataset

from tcl.data.bad_samples import load_with_policy
from tcl.data.sampling import seeded_sample
from tcl.errors import DataError


@dataclass(frozen=True)
class SampleReading:
    """How every dataset reads a sample (the ``data.*`` settings of the run).

    Args:
        on_bad_sample: ``skip`` (replace the sample by the next readable one and record why) or ``error``.
        max_words: text length cap in words (caption or question).
        max_image_pixels: decompression-bomb guard.
        seed: base seed of the per-sample augmentation.
    """

    on_bad_sample: Literal["skip", "error"] = "skip"
    max_words: int = 30
    max_image_pixels: int | None = None
    seed: int = 0


class TableDataset(Dataset, abc.ABC):
    """A dataset over ``table`` whose subclasses implement ``_load(index) -> sample`` and may raise BadSampleError.

    Args:
        table: the rows (a memory-mapped index, or a Hugging Face table).
        transform: image transform.
        reading: the bad-sample policy, text cap, image-size guard and augmentation seed.
        skipped_at_indexing: rows left out when the table was built, by reason (reported with the skips).
        empty_message: the error raised when the table has no row.
    """

    def __init__(self, table: datasets.Dataset, transform: Callable, reading: SampleReading,
                 skipped_at_indexing: Counter | None, empty_message: str):
        if len(table) == 0:
            raise DataError(empty_message)
        self.table = table
        self.transform = transform
        self.reading = reading
        self.skipped_at_indexing = skipped_at_indexing or Counter()

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, key: int) -> dict[str, Any]:
        """``key`` is an index, or a ``ShardedEpochSampler`` key (epoch * len + index) that also seeds the sample's
        augmentation, so the same key always gives the same tensors."""
        with seeded_sample(self.reading.seed, self._augmentation_key(int(key))):
            return load_with_policy(self._load, int(key) % len(self), len(self), self.reading.on_bad_sample)

    def _augmentation_key(self, key: int) -> int | str:
        """What seeds the sample's random augmentation: its sampler key (every draw different)."""
        return key

    @abc.abstractmethod
    def _load(self, index: int) -> dict[str, Any]:
        """The sample at ``index``; raises BadSampleError when it cannot be read."""
