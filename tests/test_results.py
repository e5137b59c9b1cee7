"""EvalAI result files: merging per-process parts, coverage of the questions file, atomic writes (TCL.md B §5.3)."""

import json
import os

import pytest

from tcl.errors import DataError
from tcl.evaluation.results import check_complete, merge_results, read_results, write_results


def _entries(*pairs) -> list[dict]:
    return [{"question_id": question_id, "answer": answer} for question_id, answer in pairs]


@pytest.fixture
def questions_file(tmp_path):
    path = tmp_path / "v2_OpenEnded_mscoco_test2015_questions.json"
    questions = [{"question_id": question_id, "image_id": 1, "question": "?"} for question_id in range(10, 20)]
    path.write_text(json.dumps({"questions": questions, "data_subtype": "test2015"}))
    return path


def test_merge_concatenates_sorts_and_drops_sampler_padding():
    rank0 = _entries((5, "yes"), (1, "no"), (3, "2"))
    rank1 = _entries((4, "red"), (2, "dog"), (5, "yes"))  # 5 repeated: the sampler padded the last batch
    merged = merge_results([rank0, rank1])
    assert merged == _entries((1, "no"), (2, "dog"), (3, "2"), (4, "red"), (5, "yes"))


def test_merge_accepts_a_generator_and_empty_parts():
    assert merge_results(part for part in [[], _entries((2, "b")), [], _entries((1, "a"))]) == \
        _entries((1, "a"), (2, "b"))
    assert merge_results([]) == []


def test_merge_refuses_a_question_with_two_answers():
    with pytest.raises(ValueError, match="question 7 has two different answers"):
        merge_results([_entries((7, "yes"), (8, "no")), _entries((7, "no"))])


def test_merge_refuses_malformed_entries():
    with pytest.raises(ValueError, match="question_id"):
        merge_results([[{"question": 3, "answer": "yes"}]])


def test_check_complete_accepts_full_coverage(questions_file):
    check_complete(_entries(*[(question_id, "yes") for question_id in range(19, 9, -1)]), questions_file)


def test_check_complete_reports_missing_questions(questions_file):
    results = _entries(*[(question_id, "yes") for question_id in range(13, 20)])
    with pytest.raises(ValueError, match=r"3 of 10 questions have no answer \(e\.g\. \[10, 11, 12\]\)"):
        check_complete(results, questions_file)


def test_check_complete_refuses_unknown_and_repeated_ids(questions_file):
    results = _entries(*[(question_id, "yes") for question_id in range(10, 22)]) + _entries((10, "yes"))
    with pytest.raises(ValueError) as error:
        check_complete(results, questions_file)
    message = str(error.value)
    assert "2 answered question ids are not in the file (e.g. [20, 21])" in message
    assert "1 entries repeat a question id" in message and "have no answer" not in message


def test_check_complete_names_a_bad_questions_file(tmp_path):
    path = tmp_path / "questions.json"
    path.write_text("[]")
    with pytest.raises(DataError, match="official questions file"):
        check_complete([], path)


def test_write_then_read_round_trip_leaves_no_temporary_file(tmp_path):
    results = _entries((1, "yes"), (2, "café"), (3, "10:30"))
    path = tmp_path / "out" / "vqa_results_test2015.json"
    write_results(results, path)
    assert read_results(path) == results
    assert json.loads(path.read_text(encoding="utf-8")) == results
    assert os.listdir(path.parent) == [path.name]


def test_write_replaces_an_old_file_and_cleans_up_after_a_failure(tmp_path):
    path = tmp_path / "results.json"
    write_results(_entries((1, "old")), path)
    with pytest.raises(TypeError):
        write_results([{"question_id": 1, "answer": object()}], path)
    assert read_results(path) == _entries((1, "old"))
    assert os.listdir(tmp_path) == [path.name]
    write_results(_entries((1, "new")), path)
    assert read_results(path) == _entries((1, "new"))


def test_read_refuses_something_that_is_not_a_result_list(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"question_id": 1}')
    with pytest.raises(DataError, match="JSON list"):
        read_results(path)
    path.write_text('[{"question_id": 1}]')
    with pytest.raises(DataError, match="results.json"):
        read_results(path)
