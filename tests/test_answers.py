"""The classifier head's answer vocabulary and its soft targets (TCL.md Part A §A.1 (8), Part B §4.7)."""

import json
import random

import pytest
import torch

from tcl.errors import DataError
from tcl.evaluation.answers import AnswerVocabulary, soft_target_matrix, soft_targets
from tcl.evaluation.vqa_metric import vqa_accuracy

# Raw human answers with synonyms and spellings the official normalisation merges ("two"/"2", "Yes"/"yes.").
HUMAN_POOL = ["2", "two", "Two", "3", "three", "yes", "Yes", "yes.", "no", "No", "dog", "the dog", "a dog", "dogs",
              "red", "red ", "x-ray", "x ray", "dont know", "don't know", "cat", "none", "0"]
# A list as a loaded file may hold it: mostly normalised, but with raw forms too ("two", "Yes").
VOCABULARY = ["2", "two", "3", "yes", "Yes", "no", "dog", "dogs", "red", "x ray", "don't know", "0", "blue"]


def _record(answer: str, humans: list[str] | None = None) -> dict:
    return {"multiple_choice_answer": answer, "answers": humans if humans is not None else [answer] * 10}


def test_build_counts_normalised_answers_orders_them_and_filters_by_count():
    records = [_record("yes")] * 5 + [_record("Yes.")] * 2 + [_record("two")] * 3 + [_record("2")] * 1 \
        + [_record("no")] * 4 + [_record("blue")] * 4 + [_record("rare")]
    vocabulary = AnswerVocabulary.build(records, min_count=4)
    assert vocabulary.answers == ["yes", "2", "blue", "no"]  # 7, 4, then the tie at 4 alphabetically
    assert vocabulary.index == {"yes": 0, "2": 1, "blue": 2, "no": 3}
    assert len(vocabulary) == 4
    assert "blue" in vocabulary and "rare" not in vocabulary and "Yes." not in vocabulary


def test_build_with_min_count_one_keeps_every_answer_but_the_empty_string():
    records = [_record("the"), _record(""), _record("cat"), _record("dog"), _record("dog")]
    vocabulary = AnswerVocabulary.build(records, min_count=1)
    assert vocabulary.answers == ["dog", "cat"]  # "the" normalises to "", which is dropped like ""


def test_build_falls_back_to_the_most_frequent_human_answer():
    records = [{"answers": ["Two", "2", "3"]}, {"multiple_choice_answer": "", "answers": ["two"] * 10},
               {"multiple_choice_answer": "", "answers": ["tree"], "dataset": "vg"}]
    assert AnswerVocabulary.build(records, min_count=1).answers == ["2"]


def test_build_rejects_a_min_count_below_one():
    with pytest.raises(ValueError, match="min_count"):
        AnswerVocabulary.build([], min_count=0)


def test_build_is_deterministic_whatever_the_record_order():
    records = [_record(answer) for answer in ["cow", "bird", "emu", "bird", "cow", "fox"]]
    expected = AnswerVocabulary.build(records, min_count=1).answers
    random.Random(0).shuffle(records)
    assert AnswerVocabulary.build(records, min_count=1).answers == expected == ["bird", "cow", "emu", "fox"]


def test_duplicated_answers_are_refused():
    with pytest.raises(ValueError, match="'yes' appears twice"):
        AnswerVocabulary(["yes", "no", "yes"])


def test_json_round_trip(tmp_path):
    vocabulary = AnswerVocabulary(["yes", "no", "café", "2"])
    vocabulary.to_json(tmp_path / "answer_list.json")
    assert json.loads((tmp_path / "answer_list.json").read_text(encoding="utf-8")) == ["yes", "no", "café", "2"]
    loaded = AnswerVocabulary.from_json(tmp_path / "answer_list.json")
    assert loaded.answers == vocabulary.answers and loaded.index == vocabulary.index
    assert [path.name for path in tmp_path.iterdir()] == ["answer_list.json"]


def test_an_albef_answer_list_loads_as_is(tmp_path):
    """ALBEF's answer_list.json is a plain JSON list; its order is the class order and is kept verbatim."""
    path = tmp_path / "answer_list.json"
    path.write_text('["net", "pitcher", "orange", "yes", "white", "skiing", "red", "frisbee", "brushing teeth"]\n')
    vocabulary = AnswerVocabulary.from_json(path)
    assert len(vocabulary) == 9 and vocabulary.index["yes"] == 3 and vocabulary.answers[-1] == "brushing teeth"


@pytest.mark.parametrize(("content", "message"), [('{"answers": []}', "JSON list"), ('["a", 3]', "strings"),
                                                  ('["a", "a"]', "twice"), ('["a",', "malformed")])
def test_bad_answer_lists_are_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "answer_list.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        AnswerVocabulary.from_json(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(("matching", "expected"), [(1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_soft_scores_follow_the_number_of_matching_humans(matching, expected):
    vocabulary = AnswerVocabulary(["blue", "dog", "cat"])
    humans = ["dog"] * matching + ["horse"] * (10 - matching)
    indices, scores = soft_targets(humans, vocabulary)
    assert indices == [1] and scores == [pytest.approx(expected)]


def test_synonyms_share_their_matches():
    """'two' and '2' normalise alike, so both listed answers get the score of all four humans together."""
    vocabulary = AnswerVocabulary(["2", "two", "3"])
    indices, scores = soft_targets(["2", "two", "Two", "2", "3", "4", "5", "6", "7", "8"], vocabulary)
    assert indices == [0, 1, 2] and scores == pytest.approx([1.0, 1.0, 0.3])


def test_answers_outside_the_vocabulary_produce_no_target():
    vocabulary = AnswerVocabulary(["yes", "no"])
    assert soft_targets(["maybe"] * 6 + ["perhaps"] * 4, vocabulary) == ([], [])
    assert soft_targets([], vocabulary) == ([], [])


def test_unanimous_humans_are_compared_verbatim_as_in_the_official_metric():
    vocabulary = AnswerVocabulary(["yes", "Yes"])
    assert soft_targets(["Yes"] * 10, vocabulary) == ([1], [1.0])


@pytest.mark.parametrize("seed", range(300))
def test_soft_targets_equal_the_official_score_of_every_vocabulary_answer(seed):
    generator = random.Random(seed)
    size = generator.choice([10, 10, 10, 3, 2, 1])
    pool = generator.sample(HUMAN_POOL, generator.randint(1, 4))  # few distinct answers → many matches
    humans = [generator.choice(pool) for _ in range(size)]
    vocabulary = AnswerVocabulary(VOCABULARY)
    indices, scores = soft_targets(humans, vocabulary)
    expected = {class_id: vqa_accuracy(answer, humans) for class_id, answer in enumerate(vocabulary.answers)}
    assert dict(zip(indices, scores)) == {class_id: score for class_id, score in expected.items() if score > 0}
    assert indices == sorted(indices)


def test_soft_target_matrix_stacks_the_rows():
    vocabulary = AnswerVocabulary(["yes", "no", "2"])
    batch = [["yes"] * 10, ["no", "no", "yes"] + ["maybe"] * 7, [], ["two", "2", "1"] + ["3"] * 7]
    matrix = soft_target_matrix(batch, vocabulary)
    assert matrix.dtype == torch.float32 and matrix.shape == (4, 3)
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.3, 0.6, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.6]])
    torch.testing.assert_close(matrix, expected)
    assert soft_target_matrix([], vocabulary).shape == (0, 3)
