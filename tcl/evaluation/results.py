"""VQA result files for the EvalAI server: merging per-process predictions, checking coverage, atomic writes.

A result file is a JSON list of ``{"question_id": int, "answer": str}`` (TCL.md Part B §5.3). Every process predicts
its shard; a ``DistributedSampler`` pads the last batch with repeated questions, so the merged lists hold a few
duplicates that must go. The server wants an answer for every test2015 question (447,793), even for test-dev.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tcl.atomic import write_json_atomic
from tcl.json_io import load_json
from tcl.errors import DataError

logger = logging.getLogger(__name__)


def vqa_output_tag(split: str, blind: bool = False, max_questions: int | None = None) -> str:
    """What an evaluation covered, as its files are named (``vqa_results_<tag>.json``, ``vqa_scores_<tag>.json``):
    ``val2014``, ``val2014_blind`` (constant image), ``val2014_first200`` (``eval.max_questions``: the first 200
    questions at most), so a partial or blind evaluation never replaces a complete one."""
    return split + ("_blind" if blind else "") + (f"_first{max_questions}" if max_questions is not None else "")

# How many ids an error message lists; enough to look them up, short enough to read.
_EXAMPLES = 5


def merge_results(parts: Iterable[list[dict]]) -> list[dict]:
    """Concatenates per-process result lists, drops repeated questions and sorts by question id.

    Args:
        parts: One list of ``{"question_id", "answer"}`` per process.

    Returns:
        One entry per question, sorted by ``question_id``.

    Raises:
        ValueError: An entry lacks ``question_id`` or ``answer``, or one question has two different answers (the
            padding repeats a question with the same prediction, so a disagreement means the parts are mixed up).
    """
    answers: dict[int, str] = {}
    duplicates = 0
    for part in parts:
        for entry in part:
            question_id, answer = _entry(entry)
            if question_id not in answers:
                answers[question_id] = answer
                continue
            if answers[question_id] != answer:
                raise ValueError(f"question {question_id} has two different answers, {answers[question_id]!r} and "
                                 f"{answer!r}: the result parts come from different models or runs")
            duplicates += 1
    if duplicates:
        logger.debug("dropped %d repeated predictions (sampler padding)", duplicates)
    return [{"question_id": question_id, "answer": answers[question_id]} for question_id in sorted(answers)]


def _entry(entry: Any) -> tuple[int, str]:
    """The question id and answer of one result entry, checked."""
    try:
        return int(entry["question_id"]), str(entry["answer"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"a result entry must be {{'question_id': int, 'answer': str}}; got {entry!r}") from None


def check_complete(results: Sequence[dict], questions_file: str | Path) -> None:
    """Checks that the results answer exactly the questions of an official questions file, each once.

    Args:
        results: Entries ``{"question_id", "answer"}``, e.g. from :func:`merge_results`.
        questions_file: The official ``v2_OpenEnded_mscoco_<split>_questions.json`` (``{"questions": [...]}``).

    Raises:
        ValueError: Questions without an answer, answers to questions not in the file, or repeated question ids;
            the message gives each count and a few ids.
        DataError: The questions file is missing, malformed or has no ``questions`` list.
    """
    expected = _question_ids(questions_file)
    answered = [int(entry["question_id"]) for entry in results]
    answered_set = set(answered)
    problems = []
    missing = sorted(expected - answered_set)
    if missing:
        problems.append(f"{len(missing)} of {len(expected)} questions have no answer (e.g. {missing[:_EXAMPLES]})")
    unknown = sorted(answered_set - expected)
    if unknown:
        problems.append(f"{len(unknown)} answered question ids are not in the file (e.g. {unknown[:_EXAMPLES]})")
    repeated = len(answered) - len(answered_set)
    if repeated:
        problems.append(f"{repeated} entries repeat a question id (merge the parts with merge_results)")
    if problems:
        raise ValueError(f"results do not match {questions_file}: " + "; ".join(problems)
                         + ". The evaluation server needs one answer for every question of the split.")
    logger.info("results cover all %d questions of %s", len(expected), questions_file)


def _question_ids(questions_file: str | Path) -> set[int]:
    """The question ids of an official questions file."""
    payload = load_json(questions_file)
    questions = payload.get("questions") if isinstance(payload, dict) else None
    if not isinstance(questions, list):
        raise DataError(f"{questions_file}: expected an official questions file, {{'questions': [...]}}")
    return {int(question["question_id"]) for question in questions}


def write_results(results: Sequence[dict], path: str | Path) -> None:
    """Writes a result file for EvalAI atomically (a crash never leaves a truncated file to submit).

    Args:
        results: Entries ``{"question_id", "answer"}``.
        path: The destination JSON file.
    """
    write_json_atomic(list(results), path)
    logger.info("wrote %d answers to %s", len(results), path)


def read_results(path: str | Path) -> list[dict]:
    """Reads a result file written by :func:`write_results` (or by TCL/ALBEF).

    Args:
        path: A JSON list of ``{"question_id", "answer"}``.

    Returns:
        The entries, with integer ids and string answers, in file order.

    Raises:
        DataError: The file is missing, malformed, or not a list of result entries.
    """
    payload = load_json(path)
    if not isinstance(payload, list):
        raise DataError(f"{path}: a result file is a JSON list of {{'question_id', 'answer'}}; got "
                        f"{type(payload).__name__}")
    try:
        entries = [_entry(entry) for entry in payload]
    except ValueError as error:
        raise DataError(f"{path}: {error}") from None
    return [{"question_id": question_id, "answer": answer} for question_id, answer in entries]
