"""Annotations unlike official VQA v2 (other than ten answers, null answers, repeated ids, image ids that disagree)
give honest numbers by a documented rule and say so, never a silent zero; ten answers keep the official metric."""

import json
import logging

import pytest

from tcl.data.vqa import official_vqa_table
from tcl.evaluation import score_results, vqa_accuracy
from tcl.evaluation.answers import AnswerVocabulary, soft_targets


@pytest.mark.parametrize("humans,prediction,expected", [
    (["blue"], "blue", 1.0), (["blue"], "red", 0.0),
    (["blue", "blue"], "blue", 1.0), (["blue", "red"], "blue", 0.5),
    (["blue"] * 3, "blue", 1.0), (["blue", "blue", "red"], "blue", (0.5 + 0.5 + 1.0) / 3),
    (["blue"] * 4, "blue", 1.0), (["blue"] + ["red"] * 3, "blue", 0.25),  # official from four humans on
    (["blue"] * 3 + ["red"] * 8, "blue", (3 * (2 / 3) + 8 * 1.0) / 11),  # eleven: the official formula
])
def test_fewer_or_more_than_ten_answers(humans, prediction, expected):
    assert vqa_accuracy(prediction, humans) == pytest.approx(expected)


def test_ten_answers_keep_the_official_scores():
    assert [vqa_accuracy("dog", ["dog"] * k + ["cat"] * (10 - k)) for k in range(5)] == \
        pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0])


def test_a_lone_answer_is_a_training_target():
    assert soft_targets(["blue"], AnswerVocabulary(["red", "blue"])) == ([1], [1.0])


def test_scoring_counts_each_question_once_and_skips_null_answers(caplog):
    record = {"question_id": 7, "question_type": "what", "answer_type": "other",
              "answers": [{"answer": "blue"}] * 10}
    nulls = {"question_id": 8, "question_type": "what", "answer_type": "other",
             "answers": [{"answer": None}] + [{"answer": "red"}] * 9}
    with caplog.at_level(logging.WARNING):
        scores = score_results({7: "blue", 8: "red"}, [record, record, nulls])
    assert scores.num_questions == 2 and scores.overall == 100.0
    assert "repeat a question id" in caplog.text and "other than ten human answers" in caplog.text


def test_the_loader_skips_disagreeing_image_ids_and_reports_irregular_answers(shapes_copy, caplog):
    path = shapes_copy / "annotations" / "v2_mscoco_val2014_annotations.json"
    payload = json.loads(path.read_text())
    annotations = payload["annotations"]
    annotations[0]["image_id"] += 1                        # disagrees with its question
    annotations[1]["answers"] = annotations[1]["answers"][:1]  # one human answer
    annotations[2]["answers"][0]["answer"] = None          # a null answer among ten
    path.write_text(json.dumps(payload))
    with caplog.at_level(logging.WARNING):
        table, skipped = official_vqa_table(shapes_copy, "val2014", shapes_copy / "images", "skip",
                                            cache_dir=shapes_copy / "cache")
    assert skipped == {"image id mismatch": 1}
    rows = {row["question_id"]: row for row in table}
    assert annotations[0]["question_id"] not in rows
    assert len(rows[annotations[1]["question_id"]]["answers"]) == 1
    third = rows[annotations[2]["question_id"]]["answers"]
    assert len(third) == 9 and None not in third
    assert "1 with 1 human answers" in caplog.text and "1 null answers left out" in caplog.text


def test_json_lists_are_streamed_with_the_entries_json_load_gives(tmp_path):
    from tcl.json_io import stream_json_list

    entries = [{"image": "a/é.jpg", "caption": ["one", "two"], "n": 3, "x": 0.5}, {"image": "b.jpg", "caption": None}]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    assert list(stream_json_list(path)) == entries


@pytest.mark.parametrize("text, message", [
    ('{"image": "a.jpg"}', "expected a JSON list of entries, found an object at the top"),
    ('', "the file is empty"),
    ('  ', "malformed JSON near byte"),
    ('[{"image": "a.jpg", "caption": "x"}, {"image": ', "malformed JSON near byte"),
    ('[{"image": "a.jpg" "caption": "x"}]', "malformed JSON near byte"),
])
def test_a_streamed_list_that_is_not_one_names_the_file(tmp_path, text, message):
    from tcl.json_io import stream_json_list
    from tcl.errors import DataError

    path = tmp_path / "pairs.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as error:
        list(stream_json_list(path))
    assert str(path) in str(error.value)
