"""The official VQA v2 accuracy, reproducing the GT-Vision-Lab/VQA evaluation (vqaEval.py, current master a013f00).

What the official evaluation does for one question, which this module reproduces exactly:

1. The prediction and every human answer get newline/tab → space, then surrounding whitespace stripped.
2. Only if the stripped human answers are *not all identical*, the prediction and every human answer are normalised:
   punctuation processing, then lower-casing, number words → digits, articles dropped, contractions restored (see
   :func:`normalize_answer`). If the humans all agree, nothing more is done: the prediction must equal their answer
   verbatim after step 1 ("Yes" or "yes." scores 0 against ten "yes"). The maintainers confirm this is deliberate
   (GT-Vision-Lab/VQA issue #14: it keeps OCR-style answers intact). Versions before a013f00 (copied into many
   projects) instead always normalised the prediction and only punctuation-processed the humans; we follow master.
3. For each human answer, the *other* answers are compared with the prediction and the score is min(1, matches / 3);
   the question's accuracy is the mean of these leave-one-out scores. The official code leaves out one answer record
   at a time; records differ by ``answer_id``, so this is leave-one-out by position.
4. Overall and per answer/question type accuracies are plain means over questions, reported in percent rounded to
   two decimals.
"""

from __future__ import annotations

import functools
import logging
import operator
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# Marks the official code deletes or turns into spaces. Apostrophes, colons and periods are not in the set
# ("don't" and "10:30" survive; periods have their own rule below).
_PUNCTUATION_MARKS = frozenset(';/[]"{}()=+\\_-><@`,?!')
# Any digit-comma-digit anywhere (a number such as "1,000") makes the official code delete every mark outright.
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official period pattern is "(?!<=\d)(\.)(?!\d)"; its first group is a mistyped look-behind that, placed before
# a literal period, can never fail, so it reduces to: a period not followed by a digit ("3.5" and ".5" keep theirs).
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The official call passes re.UNICODE (value 32) where re.sub expects its ``count``: only 32 periods are removed.
_OFFICIAL_PERIOD_LIMIT = 32

_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})

# The official contractions table, verbatim in content. Keys are looked up after lower-casing, so the capitalised
# keys ("Im", "Ive", ...) can never fire; they are kept so the table stays the official one. "somebody'd" →
# "somebodyd" runs backwards in the official table and is kept as is.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}

# Large enough to hold every distinct answer string of VQA v2 train+val, so repeated scoring hits the cache.
_CACHE_SIZE = 1 << 20
# The official report rounds percentages to two decimals (its ``n=2``).
_OFFICIAL_DECIMALS = 2


def _clean_whitespace(text: str) -> str:
    """Step 1 of the official evaluation, applied to every answer: newlines/tabs become spaces, ends are stripped."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    """The official punctuation rule (see module constants for the period and digit-comma-digit details).

    A mark is deleted when the text has a digit-comma-digit, or when that mark touches a space anywhere in the text;
    otherwise it becomes a space ("x-ray" → "x ray", "red, blue" → "red blue"). The decision is taken per mark on
    the input text, so one mark's replacement never affects another's.
    """
    present = _PUNCTUATION_MARKS.intersection(text)
    if present:
        delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
        table = {ord(mark): "" if delete_all or f"{mark} " in text or f" {mark}" in text else " " for mark in present}
        text = text.translate(table)
    if "." in text:
        text = _PERIOD_NOT_BEFORE_DIGIT.sub("", text, count=_OFFICIAL_PERIOD_LIMIT)
    return text


def _process_digits_and_articles(text: str) -> str:
    """Lower-cases, maps number words to digits, drops articles, restores contractions; re-joins with single spaces."""
    words = (_NUMBER_WORDS.get(word, word) for word in text.lower().split())
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def normalize_answer(text: str) -> str:
    """Normalises an answer the way the official evaluation does when the human answers disagree.

    Newlines/tabs → spaces and strip, punctuation processing, then lower-case, "zero".."ten" and "none" → digits,
    articles a/an/the dropped, apostrophe-less contractions restored ("dont" → "don't"). Cached: the same strings
    recur across predictions and human answers.

    Args:
        text: A predicted or human answer.

    Returns:
        The normalised answer (single-spaced, possibly empty, e.g. for "the").
    """
    return _process_digits_and_articles(_process_punctuation(_clean_whitespace(text)))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _forms(answer: str) -> tuple[str, str]:
    """(whitespace-cleaned, fully normalised) forms of one answer."""
    return _clean_whitespace(answer), normalize_answer(answer)


def _accuracy_and_hit(prediction: str, answers: Sequence[str]) -> tuple[float, bool]:
    """``vqa_accuracy`` and ``_is_hit`` of one question, sharing the (cached) normalisation work."""
    cleaned, normals = zip(*map(_forms, answers))
    cleaned_prediction, predicted = _forms(prediction)
    if cleaned.count(cleaned[0]) == len(cleaned):  # unanimous humans: compared verbatim (step 2)
        matches = tuple(map(cleaned_prediction.__eq__, cleaned))
    else:
        matches = tuple(map(predicted.__eq__, normals))
    return _leave_one_out_mean(matches), predicted in normals


@functools.lru_cache(maxsize=1 << 16)
def _leave_one_out_mean(matches: tuple[bool, ...]) -> float:
    """Mean over positions i of min(1, matches among the others / 3), summed in position order as the official code
    does (so the floating-point result is the same); cached, as ten humans give only 1,024 match patterns.

    Fewer than four humans leave fewer than three others, so "3" becomes the number of others (a unanimous match
    then scores 1, as with ten), and a single human is its own reference: 1 if it matches, else 0. With four or more
    humans this is the official formula unchanged (``FEWER_ANSWERS_RULE``)."""
    if len(matches) == 1:
        return float(matches[0])
    needed = float(min(3, len(matches) - 1))
    total_matches = sum(matches)
    scores = (min(1.0, (total_matches - is_match) / needed) for is_match in matches)
    return sum(scores) / len(matches)


# Documented where questions with other than ten human answers are reported (loaders and evaluation).
FEWER_ANSWERS_RULE = ("the official formula (mean over left-out humans of min(1, matches among the others / 3)) "
                      "with 3 replaced by the number of others when there are fewer than three, and a lone human "
                      "answer scoring 1 on a match")


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one predicted answer against the human answers.

    With ten human answers this gives 0, 0.3, 0.6, 0.9 and 1.0 for 0, 1, 2, 3 and 4+ matching humans (official VQA
    v2). Other list lengths use the same leave-one-out mean, with the rule ``FEWER_ANSWERS_RULE`` for fewer than
    four humans (so that one, two or three agreeing humans give a full score instead of a silent 0).

    Args:
        prediction: The model's answer, raw.
        answers: The human answers, raw (normally ten).

    Returns:
        The accuracy in [0, 1].

    Raises:
        ValueError: ``answers`` is empty.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one human answer; got none (a test-split question?)")
    return _accuracy_and_hit(prediction, answers)[0]


def _is_hit(prediction: str, answers: Iterable[str]) -> bool:
    """Whether the normalised prediction equals one of the normalised human answers (always fully normalised)."""
    predicted = normalize_answer(prediction)
    return any(normalize_answer(answer) == predicted for answer in answers)


@dataclass
class VQAScores:
    """Official VQA accuracies of a set of predictions, in percent.

    Attributes:
        overall: Mean accuracy over all questions.
        per_answer_type: Mean accuracy per ``answer_type`` ("yes/no", "number", "other").
        per_question_type: Mean accuracy per ``question_type`` ("what color is the", ...).
        hit_rate: Percent of questions whose normalised prediction equals a normalised human answer. Unlike the
            accuracy, both sides are always normalised here, so "Yes" against ten "yes" is a hit scoring 0 accuracy.
        num_questions: Number of questions scored.
        per_family: Mean accuracy per ``question_family``, for annotations that carry one (the generated world's
            six families: colour, shape, count, existence, position, relation); empty for real VQA v2, which has
            none.
    """

    overall: float
    per_answer_type: dict[str, float] = field(default_factory=dict)
    per_question_type: dict[str, float] = field(default_factory=dict)
    hit_rate: float = 0.0
    num_questions: int = 0
    per_family: dict[str, float] = field(default_factory=dict)


def _check_predictions_cover(predictions: Mapping[int, str], annotations: Sequence[Mapping[str, Any]]) -> None:
    """Raises ValueError naming the annotated questions without a prediction; logs unused predictions."""
    if not annotations:
        raise ValueError("score_results got no annotations to score against")
    missing = [ann["question_id"] for ann in annotations if ann["question_id"] not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} of {len(annotations)} annotated questions have no prediction "
                         f"(e.g. question ids {missing[:5]}); predict every question or pass only those annotated")
    unused = len(predictions) - len({ann["question_id"] for ann in annotations})
    if unused > 0:
        logger.info("ignoring %d predictions for questions not in the annotations", unused)


_ANSWER_TEXT = operator.itemgetter("answer")


def _human_answers(annotation: Mapping[str, Any]) -> list[str]:
    """The answer strings of one official annotation record (null answers left out), naming the question if it has
    none."""
    answers = [str(answer) for answer in map(_ANSWER_TEXT, annotation["answers"]) if answer is not None]
    if not answers:
        raise ValueError(f"question {annotation['question_id']} has no human answers to score against")
    return answers


def _percent(total: float, count: int, ndigits: int | None) -> float:
    """``total / count`` in percent, rounded like the official report unless ``ndigits`` is None."""
    value = 100.0 * total / count
    return value if ndigits is None else round(value, ndigits)


def _group_percents(groups: Mapping[str, Sequence], ndigits: int | None) -> dict[str, float]:
    """Mean accuracy in percent of each group (``[sum, count]``), keys sorted for a stable report."""
    return {key: _percent(total, count, ndigits) for key, (total, count) in sorted(groups.items())}


def _once_per_question(annotations: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The annotations with each question id once (the first record), warning about the repeats: a question must
    not count twice in the mean."""
    seen: set[int] = set()
    unique = []
    for annotation in annotations:
        if annotation["question_id"] not in seen:
            seen.add(annotation["question_id"])
            unique.append(annotation)
    if len(unique) < len(annotations):
        logger.warning("%d annotation records repeat a question id; each question is scored once (its first record)",
                       len(annotations) - len(unique))
    irregular = sum(len(_human_answers(annotation)) != 10 for annotation in unique)
    if irregular:
        logger.warning("%d of %d questions have other than ten human answers; they are scored with %s", irregular,
                       len(unique), FEWER_ANSWERS_RULE)
    return unique


def score_results(predictions: Mapping[int, str], annotations: Sequence[Mapping[str, Any]],
                  ndigits: int | None = _OFFICIAL_DECIMALS) -> VQAScores:
    """Scores predictions against official VQA annotation records, as the official evaluation reports them.

    Args:
        predictions: ``{question_id: predicted answer}``; predictions for unannotated questions are ignored.
        annotations: Official records with ``question_id``, ``question_type``, ``answer_type`` and ``answers`` (a
            list of ``{"answer", "answer_confidence", "answer_id"}``).
        ndigits: Decimals to round the percentages to (2, as the official report); None keeps full precision.
            Python 3 rounds exact ties to even where the official Python 2 code rounded them away from zero.

    Returns:
        The overall, per-answer-type, per-question-type and (where annotated) per-family accuracies and the hit
        rate, in percent.

    Raises:
        ValueError: No annotations, an annotated question without a prediction (the count and a few ids are given),
            or a question without human answers.
    """
    annotations = _once_per_question(annotations)
    _check_predictions_cover(predictions, annotations)
    # Running sums add in question order, exactly as summing the per-question lists would.
    total, hits = 0.0, 0
    by_answer_type: dict[str, list] = defaultdict(lambda: [0.0, 0])
    by_question_type: dict[str, list] = defaultdict(lambda: [0.0, 0])
    by_family: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for annotation in annotations:
        accuracy, hit = _accuracy_and_hit(predictions[annotation["question_id"]], _human_answers(annotation))
        total += accuracy
        hits += hit
        groups = [by_answer_type[annotation["answer_type"]], by_question_type[annotation["question_type"]]]
        if annotation.get("question_family") is not None:
            groups.append(by_family[annotation["question_family"]])
        for group in groups:
            group[0] += accuracy
            group[1] += 1
    count = len(annotations)
    scores = VQAScores(overall=_percent(total, count, ndigits),
                       per_answer_type=_group_percents(by_answer_type, ndigits),
                       per_question_type=_group_percents(by_question_type, ndigits),
                       hit_rate=_percent(hits, count, ndigits), num_questions=count,
                       per_family=_group_percents(by_family, ndigits))
    logger.debug("VQA accuracy %.2f%% over %d questions", scores.overall, scores.num_questions)
    return scores
