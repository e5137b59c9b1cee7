"""The official VQA accuracy, as the VQA evaluation code (GT-Vision-Lab/VQA, vqaEval.py) computes it.

What the official code does, and we reproduce:
- The prediction is cleaned: newlines/tabs → spaces, stripped, then *punctuation processing* and *digit/article
  processing* (lower-case, number words zero..ten and "none" → digits, articles a/an/the dropped, contractions such
  as "dont" → "don't" restored).
- The ten human answers are used as stored when they all agree; when they disagree, each gets the punctuation
  processing only (no lower-casing, no digit mapping: VQA v2 annotations are already in that form).
- Per question: for each human answer, the other nine are compared with the prediction and the score is
  min(1, matches / 3); the question's accuracy is the mean of those ten scores.
- Punctuation processing: each mark in the official list is deleted if it touches a space or if the text contains a
  digit-comma-digit pattern, else replaced by a space; then periods not followed by a digit are deleted. The official
  call passes ``re.UNICODE`` where ``re.sub`` expects a count, so at most 32 periods are removed; kept here.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # the official pattern, typo included: a period not before a digit
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)

# The official contraction table: apostrophe-less spellings → the spelling the annotations use.
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
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}


def _process_punctuation(text: str) -> str:
    result = text
    has_number_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in _PUNCTUATION:
        if has_number_comma or mark + " " in text or " " + mark in text:
            result = result.replace(mark, "")
        else:
            result = result.replace(mark, " ")
    return _PERIOD.sub("", result, _OFFICIAL_PERIOD_COUNT)


def _process_digits_and_articles(text: str) -> str:
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


@functools.lru_cache(maxsize=1 << 18)
def normalize_answer(text: str) -> str:
    """The official normalisation of a predicted answer (see the module docstring)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_and_articles(_process_punctuation(text))


@functools.lru_cache(maxsize=1 << 18)
def _human_form(answer: str) -> str:
    return _process_punctuation(answer)


def human_answers(answers: Iterable[str]) -> list[str]:
    """The human answers as the official code compares them: punctuation-processed only when they disagree."""
    answers = list(answers)
    if len(set(answers)) > 1:
        return [_human_form(a) for a in answers]
    return answers


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Official accuracy (0..1) of one prediction against the human answers (normally ten).

    Raises:
        ValueError: no human answers.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one human answer (is this a test-split question?)")
    predicted = normalize_answer(prediction)
    humans = human_answers(answers)
    matches = sum(answer == predicted for answer in humans)
    # Leaving out human i removes one match exactly when human i itself matches.
    total = sum(min(1.0, (matches - (answer == predicted)) / 3.0) for answer in humans)
    return total / len(humans)


def hit(prediction: str, answers: list[str]) -> bool:
    """The thesis's "hit": the normalised prediction equals one of the human answers (as the metric compares them)."""
    return normalize_answer(prediction) in set(human_answers(answers))


@dataclass
class VQAScores:
    """Official accuracies in percent, overall and per answer / question type, plus the hit rate."""

    overall: float
    per_answer_type: dict[str, float] = field(default_factory=dict)
    per_question_type: dict[str, float] = field(default_factory=dict)
    hit_rate: float = 0.0
    num_questions: int = 0


def score_results(predictions: dict[int, str], annotations: list[dict[str, Any]]) -> VQAScores:
    """Scores predictions {question_id: answer} against official annotation records.

    Raises:
        ValueError: an annotated question has no prediction (the count and a few ids are given).
    """
    missing = [a["question_id"] for a in annotations if a["question_id"] not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} annotated questions have no prediction (e.g. {missing[:5]}); "
                         f"predict every question or restrict the annotations.")
    per_answer_type: dict[str, list[float]] = defaultdict(list)
    per_question_type: dict[str, list[float]] = defaultdict(list)
    scores, hits = [], 0
    for ann in annotations:
        answers = [a["answer"] for a in ann["answers"]]
        prediction = predictions[ann["question_id"]]
        score = vqa_accuracy(prediction, answers)
        scores.append(score)
        hits += hit(prediction, answers)
        per_answer_type[ann.get("answer_type", "")].append(score)
        per_question_type[ann.get("question_type", "")].append(score)
    count = max(len(scores), 1)
    return VQAScores(overall=100.0 * sum(scores) / count,
                     per_answer_type={k: 100.0 * sum(v) / len(v) for k, v in sorted(per_answer_type.items())},
                     per_question_type={k: 100.0 * sum(v) / len(v) for k, v in sorted(per_question_type.items())},
                     hit_rate=100.0 * hits / count, num_questions=len(scores))
