"""The official VQA accuracy: expectations derived by hand from GT-Vision-Lab/VQA vqaEval.py (master, a013f00).

"Official" below refers to that file: ``evaluate`` (per-question loop), ``processPunctuation`` and
``processDigitArticle``. Each docstring says which part of it fixes the expected value.
"""

import logging

import pytest

from tcl.evaluation import VQAScores, normalize_answer, score_results, vqa_accuracy

OTHERS = ["cat", "bird", "horse", "cow", "sheep", "goat", "pig", "duck", "fox", "owl"]


def _humans(answer: str, matching: int, total: int = 10) -> list[str]:
    """``matching`` copies of ``answer`` padded with distinct other answers to ``total``."""
    return [answer] * matching + OTHERS[: total - matching]


@pytest.mark.parametrize(("matching", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_partial_credit_by_number_of_matching_humans(matching, expected):
    """Official loop: mean over the 10 leave-one-out sets of min(1, matches/3).

    k matching humans: k sets hold k-1 matches, 10-k sets hold k. k=1: 9 * 1/3 / 10 = 0.3; k=2: (2 * 1/3 + 8 * 2/3) / 10
    = 0.6; k=3: (3 * 2/3 + 7 * 1) / 10 = 0.9 (three matches are *not* full credit); k=4: every set has >= 3 → 1.0.
    """
    assert vqa_accuracy("dog", _humans("dog", matching)) == pytest.approx(expected)


def test_number_words_become_digits():
    """processDigitArticle maps "two" → "2" on the prediction and on the (disagreeing) humans alike."""
    assert vqa_accuracy("two", _humans("2", 4)) == pytest.approx(1.0)
    assert vqa_accuracy("2", _humans("two", 4)) == pytest.approx(1.0)
    assert vqa_accuracy("Two", _humans("2", 1)) == pytest.approx(0.3)
    assert normalize_answer("none") == "0"  # manualMap also holds 'none': '0'


def test_none_matches_none_since_humans_are_normalised_too():
    """GT-Vision-Lab/VQA issue #7 (pre-a013f00 code gave 0 here); master normalises both sides, "none" → "0"."""
    assert vqa_accuracy("none", _humans("none", 1)) == pytest.approx(0.3)


def test_articles_are_dropped():
    """processDigitArticle drops the words a/an/the; a lone article normalises to the empty string."""
    assert vqa_accuracy("the dog", _humans("dog", 4)) == pytest.approx(1.0)
    assert vqa_accuracy("dog", _humans("a dog", 4)) == pytest.approx(1.0)
    assert normalize_answer("An apple on the table") == "apple on table"
    assert normalize_answer("the") == ""


def test_contractions_are_restored():
    """The official contractions table, looked up word by word after lower-casing."""
    assert vqa_accuracy("dont", _humans("don't", 4)) == pytest.approx(1.0)
    assert normalize_answer("Dont know") == "don't know"
    assert normalize_answer("isnt") == "isn't"
    assert normalize_answer("whats that") == "what's that"
    assert normalize_answer("oclock") == "o'clock"
    assert normalize_answer("somebody'd") == "somebodyd"  # the table's reversed entry, kept as official
    assert normalize_answer("don't") == "don't"  # the apostrophe is not in the official punctuation list


def test_thousands_comma_and_other_commas():
    """processPunctuation: a digit-comma-digit anywhere deletes every mark; else a mark touching a space is deleted
    and any other mark becomes a space."""
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("1,000 (approx)") == "1000 approx"  # parentheses deleted too, because of "1,000"
    assert normalize_answer("red,blue") == "red blue"
    assert normalize_answer("red, blue") == "red blue"
    assert vqa_accuracy("1,000", _humans("1000", 4)) == pytest.approx(1.0)


def test_periods():
    """periodStrip removes periods not followed by a digit (its "(?!<=\\d)" group never fails), so decimals keep
    theirs; re.UNICODE passed as re.sub's count caps the removals at 32."""
    assert normalize_answer("3.5") == "3.5"
    assert normalize_answer(".5") == ".5"
    assert normalize_answer("5.") == "5"
    assert normalize_answer("yes.") == "yes"
    assert normalize_answer("u.s.a.") == "usa"
    assert normalize_answer("." * 40) == "." * 8  # the one non-idempotent quirk: a second pass removes the rest


def test_trailing_punctuation_case_and_whitespace():
    """Other marks: a trailing "!"/"?" becomes a space that the final split drops; lower-casing; "\\n"/"\\t" → " "."""
    assert normalize_answer("Yes!") == "yes"
    assert normalize_answer("what?") == "what"
    assert normalize_answer("x-ray") == "x ray"
    assert normalize_answer("t - shirt") == "t shirt"
    assert normalize_answer("  Red\tand\nBLUE ") == "red and blue"
    assert normalize_answer("10:30") == "10:30"  # the colon is not in the official list
    assert vqa_accuracy("Yes.", _humans("yes", 9)) == pytest.approx(1.0)


def test_unanimous_humans_are_compared_verbatim():
    """Official master normalises nothing when the stripped human answers are all identical (``len(set(...)) > 1``
    guards both the humans' and the prediction's processing; issue #14 confirms it is deliberate). Only newline/tab
    replacement and stripping apply, and answers equal after stripping count as identical."""
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes"] * 10) == 0.0
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == pytest.approx(1.0)
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["yes "]) == 0.0
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["Yes"]) == pytest.approx(1.0)  # they differ → both sides normalised


def test_answer_lists_of_other_lengths():
    """The same leave-one-out mean; fewer than three others lower the "3" to their number, and a lone answer is its
    own reference (tests/robustness/test_irregular_annotations.py has the whole rule)."""
    assert vqa_accuracy("dog", ["dog"]) == 1.0
    assert vqa_accuracy("dog", ["dog", "dog", "dog"]) == pytest.approx(1.0)
    assert vqa_accuracy("dog", ["dog"] * 4) == pytest.approx(1.0)
    assert vqa_accuracy("dog", ["dog", "cat"]) == pytest.approx(1 / 2)  # leaving out "cat": 1/1; out "dog": 0


def test_empty_answer_list_is_an_error():
    with pytest.raises(ValueError, match="at least one human answer"):
        vqa_accuracy("dog", [])


@pytest.mark.parametrize("text", ["The Dog!", "1,000 people.", "dont", "two a-b c", "yes, no", "3.5 m.", "none",
                                  "x - ray", "somebody'd", "  mixed\tCASE?\n"])
def test_normalize_answer_is_idempotent(text):
    """Normalising a normalised answer changes nothing (bar 33+ periods, see test_periods), so pre-normalised
    predictions score the same."""
    once = normalize_answer(text)
    assert normalize_answer(once) == once


def _annotation(question_id, answer_type, question_type, answers):
    """An official annotation record."""
    return {"question_id": question_id, "answer_type": answer_type, "question_type": question_type,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}


@pytest.fixture
def annotations():
    return [_annotation(1, "yes/no", "is the", ["yes"] * 10),
            _annotation(2, "yes/no", "is the", ["yes"] * 9 + ["no"]),
            _annotation(3, "number", "how many", ["2"] + ["3"] * 9),
            _annotation(4, "other", "what color is the", ["yes"] * 10)]


def test_score_results_aggregates_in_percent(annotations):
    """Official setAccuracy: plain means over questions, in percent, rounded to 2 decimals.

    Accuracies: q1 "yes" 1.0; q2 "no" vs one "no" 0.3; q3 "two" → "2" vs one "2" 0.3; q4 "Yes" vs ten verbatim
    "yes" 0.0 (unanimous, not normalised) — yet a hit, since the hit rate always normalises both sides.
    """
    scores = score_results({1: "yes", 2: "no", 3: "two", 4: "Yes", 99: "extra is ignored"}, annotations)
    assert isinstance(scores, VQAScores)
    assert scores.overall == 40.0
    assert scores.per_answer_type == {"number": 30.0, "other": 0.0, "yes/no": 65.0}
    assert scores.per_question_type == {"how many": 30.0, "is the": 65.0, "what color is the": 0.0}
    assert scores.hit_rate == 100.0
    assert scores.num_questions == 4


def test_score_results_rounding(annotations):
    """Two decimals by default like the official report; ndigits=None keeps full precision."""
    predictions = {1: "yes", 2: "no", 3: "cat", 4: "cat"}
    assert score_results(predictions, annotations).overall == 32.5
    assert score_results(predictions, annotations[1:]).overall == 10.0
    assert score_results(predictions, annotations[:3]).overall == 43.33
    assert score_results(predictions, annotations[:3], ndigits=None).overall == pytest.approx(130 / 3)
    assert score_results(predictions, annotations[:3]).hit_rate == 66.67


def test_missing_predictions_are_reported(annotations):
    with pytest.raises(ValueError, match=r"2 of 4 annotated questions have no prediction.*\[2, 4\]"):
        score_results({1: "yes", 3: "2"}, annotations)


def test_question_without_answers_is_reported():
    with pytest.raises(ValueError, match="question 7 has no human answers"):
        score_results({7: "yes"}, [_annotation(7, "yes/no", "is the", [])])


def test_no_annotations_is_an_error():
    with pytest.raises(ValueError, match="no annotations"):
        score_results({}, [])


def test_unused_predictions_are_logged(annotations, caplog):
    with caplog.at_level(logging.INFO, logger="tcl.evaluation.vqa_metric"):
        score_results({1: "yes", 2: "no", 3: "2", 4: "yes", 5: "x", 6: "y"}, annotations)
    assert "ignoring 2 predictions" in caplog.text


def test_score_results_fast_path_equals_the_per_question_functions():
    """score_results shares normalisation work between accuracy and hit; it must equal vqa_accuracy / _is_hit."""
    import random

    from tcl.evaluation.vqa_metric import _is_hit

    rng = random.Random(0)
    pool = ["yes", "Yes", "yes.", "no", "two", "2", "2.", "the dog", "dog", "dogs", "x-ray", "x ray", "1,000",
            "1000", "dont", "don't", " red\t", "Red", "none", "0", "10:30", "3.5"]
    predictions, annotations, expected, hits = {}, [], [], 0
    for question_id in range(2000):
        base = rng.choice(pool)
        humans = [base if rng.random() < rng.random() else rng.choice(pool) for _ in range(rng.choice([1, 3, 10]))]
        prediction = rng.choice(pool)
        predictions[question_id] = prediction
        annotations.append({"question_id": question_id, "question_type": "t", "answer_type": "other",
                            "answers": [{"answer": h, "answer_id": i + 1} for i, h in enumerate(humans)]})
        expected.append(vqa_accuracy(prediction, humans))
        hits += _is_hit(prediction, humans)
    scores = score_results(predictions, annotations, ndigits=None)
    assert scores.overall == 100.0 * sum(expected) / len(expected)
    assert scores.hit_rate == 100.0 * hits / len(expected)


def test_accuracy_per_question_family_where_annotated():
    """The generated world's annotations name a family; the official ones do not, and then there is none."""
    from tcl.evaluation.vqa_metric import score_results

    def record(qid, family, answer):
        entry = {"question_id": qid, "question_type": "what color is the", "answer_type": "other",
                 "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)]}
        return entry if family is None else {**entry, "question_family": family}

    annotations = [record(1, "color", "red"), record(2, "color", "blue"), record(3, "position", "left")]
    scores = score_results({1: "red", 2: "green", 3: "left"}, annotations)
    assert scores.per_family == {"color": 50.0, "position": 100.0}
    assert score_results({1: "red"}, [record(1, None, "red")]).per_family == {}
