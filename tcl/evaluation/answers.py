"""The answer vocabulary of the VQA classifier head and its soft targets (TCL.md Part A §A.1 (8), Part B §4.7).

The head predicts one of a fixed list of answers; the standard VQA v2 list keeps the normalised multiple-choice
answers seen at least 9 times in train+val (3,129 answers; ALBEF's ``answer_list.json`` is that set without the empty
string). It is trained with BCE against the score the official metric would give each listed answer, so a perfect
fit of the targets is a perfect official accuracy.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tcl.json_io import load_json
from tcl.errors import DataError
from tcl.atomic import write_json_atomic
from tcl.evaluation.vqa_metric import normalize_answer, vqa_accuracy

logger = logging.getLogger(__name__)

# File name of a saved answer list (ALBEF's name and format), in fine-tuning runs and saved models.
ANSWER_LIST = "answer_list.json"
# The standard VQA v2 threshold: answers seen at least 9 times give the usual 3,129 classes.
STANDARD_MIN_COUNT = 9


class AnswerVocabulary:
    """An ordered list of answers; the position of an answer is its class id.

    Args:
        answers: The answers in class-id order, all distinct.

    Attributes:
        answers: The answers in class-id order.
        index: Class id of each answer.

    Raises:
        ValueError: An answer is not a string or appears twice.
    """

    def __init__(self, answers: Iterable[str]):
        self.answers = list(answers)
        self.index: dict[str, int] = {}
        for class_id, answer in enumerate(self.answers):
            if not isinstance(answer, str):
                raise ValueError(f"answer {class_id} is {answer!r}; answers must be strings")
            if answer in self.index:
                raise ValueError(f"answer {answer!r} appears twice (class ids {self.index[answer]} and {class_id})")
            self.index[answer] = class_id
        # Soft targets look candidates up by normalised form; a loaded list may hold several answers per form.
        self._by_normalized: dict[str, list[int]] = defaultdict(list)
        for class_id, answer in enumerate(self.answers):
            self._by_normalized[normalize_answer(answer)].append(class_id)

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: object) -> bool:
        return answer in self.index

    def __repr__(self) -> str:
        return f"AnswerVocabulary({len(self)} answers)"

    def candidates(self, normalized: str) -> list[int]:
        """Class ids of the answers whose normalised form is ``normalized`` (none if no answer has it)."""
        return self._by_normalized.get(normalized, [])

    @classmethod
    def build(cls, records: Iterable[Mapping[str, Any]], min_count: int = STANDARD_MIN_COUNT) -> AnswerVocabulary:
        """Keeps the normalised multiple-choice answers of training records seen at least ``min_count`` times.

        Records without a multiple-choice answer (ALBEF-style lists) use their most frequent normalised human answer
        instead; records with fewer than two human answers (Visual Genome) are then not counted, because a single
        human answer never earns a non-zero score under the official metric. The empty string is dropped.

        Args:
            records: Rows with ``multiple_choice_answer`` and ``answers`` (the human answers).
            min_count: Fewest occurrences an answer needs (9 is the VQA v2 standard; 1 keeps every answer).

        Returns:
            The answers ordered by count, most frequent first, ties alphabetically.

        Raises:
            ValueError: ``min_count`` is below 1.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1; got {min_count}")
        counts = Counter(_multiple_choice_answer(record) for record in records)
        counts.pop("", None)
        kept = sorted((item for item in counts.items() if item[1] >= min_count), key=lambda item: (-item[1], item[0]))
        vocabulary = cls(answer for answer, _ in kept)
        covered, total = sum(count for _, count in kept), sum(counts.values())
        logger.info("answer vocabulary: %d of %d distinct answers seen at least %d times, covering %.1f%% of %d "
                    "questions", len(vocabulary), len(counts), min_count, 100.0 * covered / max(total, 1), total)
        return vocabulary

    def to_json(self, path: str | Path) -> None:
        """Writes the answers as a JSON list of strings in class-id order (ALBEF's ``answer_list.json`` format)."""
        write_json_atomic(self.answers, path)

    @classmethod
    def from_json(cls, path: str | Path) -> AnswerVocabulary:
        """Reads a JSON list of answer strings, e.g. one written by :meth:`to_json` or ALBEF's ``answer_list.json``.

        The list is taken as is (no normalisation, no reordering): positions are class ids of a trained head.

        Args:
            path: The JSON file.

        Returns:
            The vocabulary, class ids in file order.

        Raises:
            DataError: The file is missing or malformed, or is not a list of distinct strings.
        """
        payload = load_json(path)
        if not isinstance(payload, list):
            raise DataError(f"{path}: an answer list is a JSON list of strings; got {type(payload).__name__}")
        try:
            return cls(payload)
        except ValueError as error:
            raise DataError(f"{path}: {error}") from None


def _multiple_choice_answer(record: Mapping[str, Any]) -> str:
    """The normalised multiple-choice answer of a record, or its most frequent normalised human answer."""
    answer = record.get("multiple_choice_answer") or ""
    if answer:
        return normalize_answer(answer)
    humans = record.get("answers") or []
    if len(humans) < 2:
        return ""
    return Counter(normalize_answer(human) for human in humans).most_common(1)[0][0]


def soft_targets(humans: Sequence[str], vocabulary: AnswerVocabulary) -> tuple[list[int], list[float]]:
    """The official VQA score of every vocabulary answer that scores above zero against these human answers.

    Each score is exactly ``vqa_accuracy(answer, humans)``: with ten humans 0.3, 0.6, 0.9 and 1.0 for 1, 2, 3 and 4+
    matches. That includes the official rule that answers are compared verbatim when all humans agree: against ten
    "Yes" the listed "yes" scores 0 and gets no target. Only answers with the normalised form of a human answer can
    score, so those are the only ones scored.

    Args:
        humans: The human answers of one question, raw (empty for test questions).
        vocabulary: The answer list of the head.

    Returns:
        Class ids in increasing order and their scores; both empty when no listed answer scores.
    """
    if not humans:
        return [], []
    candidates = sorted({class_id for form in {normalize_answer(human) for human in humans}
                         for class_id in vocabulary.candidates(form)})
    indices, scores = [], []
    for class_id in candidates:
        score = vqa_accuracy(vocabulary.answers[class_id], humans)
        if score > 0.0:
            indices.append(class_id)
            scores.append(score)
    return indices, scores


def soft_target_matrix(batch_humans: Sequence[Sequence[str]], vocabulary: AnswerVocabulary) -> torch.Tensor:
    """Soft targets of a batch of questions as a dense matrix (the BCE targets of the classifier head).

    Args:
        batch_humans: The human answers of each question.
        vocabulary: The answer list of the head.

    Returns:
        A float32 tensor [B, V] holding :func:`soft_targets` of each question, zero elsewhere.
    """
    targets = torch.zeros(len(batch_humans), len(vocabulary), dtype=torch.float32)
    for row, humans in enumerate(batch_humans):
        indices, scores = soft_targets(humans, vocabulary)
        if indices:
            targets[row, indices] = torch.tensor(scores, dtype=torch.float32)
    return targets


def merge_normalized(answers: Sequence[str], weights: Sequence[float], exact: bool = False
                     ) -> tuple[list[str], list[float]]:
    """Training answers of the decoder head: answers with the same official normal form become one, their weights
    summed ("Yes", "yes." and "yes" are one target, as the metric counts them as one answer); with ``exact``, only
    identical strings are merged, as TCL's dataset does. Order: first seen."""
    merged: dict[str, float] = {}
    for answer, weight in zip(answers, weights):
        form = answer if exact else normalize_answer(answer)
        if form:
            merged[form] = merged.get(form, 0.0) + float(weight)
    return list(merged), list(merged.values())
