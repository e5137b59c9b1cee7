"""The ``data.on_bad_sample`` policy: skip and count, or stop with the sample's error.

Datasets replace a bad sample with the next readable one (so batch sizes, and with them the queue arithmetic, stay
fixed) and record why in the sample; the collate functions sum the records into the batch, which carries them from
DataLoader workers to the main process, where ``SkipReport`` adds them up and reports them at the end of an epoch.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable

from tcl.errors import BadSampleError, DataError

logger = logging.getLogger(__name__)

# After this many unreadable samples in a row the data is almost certainly misconfigured, not merely damaged.
MAX_CONSECUTIVE_BAD = 50
# Web-scale sets lose a few per cent of their images: each process (DataLoader worker) warns of the first
# WARN_FIRST skipped samples of each reason, then of every WARN_EVERY-th; all of them are counted.
WARN_FIRST, WARN_EVERY = 10, 1000
_warned: Counter = Counter()


# What to check when a dataset sample fails, by reason: training settings, which messages about a user's own input
# (tcl.data.images, inference) leave out.
DATASET_HINTS = {"missing image": "check data.root / data.image_root and that the dataset was downloaded completely",
                 "empty image file": "or remove it from the annotation",
                 "corrupt image": "or remove it from the annotation",
                 "image too large": "the setting is data.max_image_pixels"}


def _with_hint(error: BadSampleError) -> str:
    hint = DATASET_HINTS.get(error.reason)
    return f"{error}; {hint}" if hint else str(error)


def load_with_policy(load: Callable[[int], dict[str, Any]], index: int, size: int, on_bad_sample: str
                     ) -> dict[str, Any]:
    """Calls ``load(index)``; on a BadSampleError skips forward (``skip``) or re-raises (``error``).

    The returned sample carries ``skipped``: the reason why sample ``index`` itself was replaced, or nothing. Bad
    samples passed over on the way to a replacement are counted when they are requested themselves, so an epoch
    counts each bad sample once, however many bad neighbours it has.
    """
    reasons: list[str] = []
    for offset in range(MAX_CONSECUTIVE_BAD):
        position = (index + offset) % size
        try:
            sample = load(position)
        except BadSampleError as error:
            if on_bad_sample == "error":
                raise BadSampleError(f"{_with_hint(error)} (sample {position}; set data.on_bad_sample=skip to skip "
                                     f"and count such samples)", error.reason) from None
            if offset == 0:
                warn_skip(position, error)
            reasons.append(error.reason)
            continue
        sample["skipped"] = reasons[:1]
        return sample
    raise DataError(f"{MAX_CONSECUTIVE_BAD} unreadable samples in a row from index {index} (reasons: "
                    f"{Counter(reasons).most_common(3)}): the data is probably misconfigured. Check data.root and "
                    f"data.image_root.")


def warn_skip(position: int | str, error: BadSampleError) -> None:
    _warned[error.reason] += 1
    seen = _warned[error.reason]
    if seen <= WARN_FIRST or seen % WARN_EVERY == 0:
        later = (f" ({seen} '{error.reason}' samples skipped by this process so far; from now on one line per "
                 f"{WARN_EVERY}, all counted in metrics.jsonl and the summary)" if seen >= WARN_FIRST else "")
        logger.warning("skipping sample %s: %s%s", position, _with_hint(error), later)


def merge_skipped(samples: list[dict[str, Any]]) -> dict[str, int]:
    """Sums the ``skipped`` records of a batch's samples into {reason: count}."""
    return dict(Counter(reason for sample in samples for reason in sample.get("skipped", [])))


class SkipReport:
    """Accumulates skipped-sample counts (from batches and from indexing) for the end-of-epoch report."""

    def __init__(self, at_indexing: Counter | None = None):
        self.at_indexing = Counter(at_indexing or {})
        self.at_loading: Counter = Counter()

    def update(self, batch: dict[str, Any]) -> None:
        self.at_loading.update(batch.get("skipped", {}))

    @property
    def total(self) -> int:
        return sum(self.at_loading.values()) + sum(self.at_indexing.values())

    def format(self) -> str:
        parts = []
        if self.at_indexing:
            parts.append("when indexing: " + ", ".join(f"{r} {n}" for r, n in self.at_indexing.most_common()))
        if self.at_loading:
            parts.append("when loading: " + ", ".join(f"{r} {n}" for r, n in self.at_loading.most_common()))
        return f"skipped {self.total} bad samples" + (f" ({'; '.join(parts)})" if parts else "")
