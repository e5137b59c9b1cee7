"""VQA fine-tuning and evaluation end to end on the generated data (classifier and decoder heads)."""

import json
import math
from pathlib import Path

import pytest

from tcl.engine import evaluate_vqa, finetune_vqa, pretrain
from tcl.evaluation.answers import AnswerVocabulary

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
FAST = ["train.batch_size=8", "model.queue_size=32", "data.num_workers=0", "train.warmup_steps=2",
        "eval.batch_size=16"]


def finetune(root, out, *extra):
    return finetune_vqa.main(["--config", str(REPO / "configs/vqa_tiny.yaml"), f"data.root={root}",
                              f"train.output_dir={out}", *FAST, *extra])


def test_finetune_from_pretraining_then_evaluate(shapes_root, tmp_path, capsys):
    from accelerate.state import AcceleratorState

    assert pretrain.main(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
                          f"train.output_dir={tmp_path / 'pre'}", *FAST, "train.max_steps=2"]) == 0
    AcceleratorState._reset_state(True)
    out = tmp_path / "vqa"
    assert finetune(shapes_root, out, f"vqa.init={tmp_path / 'pre'}", "train.max_steps=3") == 0
    vocabulary = AnswerVocabulary.from_json(out / "answer_list.json")
    assert {"yes", "no", "red", "2", "left"} <= set(vocabulary.answers)
    results = json.loads((out / "vqa_results_val2014.json").read_text())
    questions = json.loads((shapes_root / "annotations/v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    assert sorted(r["question_id"] for r in results) == sorted(q["question_id"] for q in questions["questions"])
    assert all(r["answer"] in vocabulary for r in results)
    scores = json.loads((out / "vqa_scores_val2014.json").read_text())
    assert 0.0 <= scores["overall"] <= 100.0 and set(scores["per_answer_type"]) == {"yes/no", "number", "other"}
    assert "VQA accuracy on val2014" in capsys.readouterr().out
    AcceleratorState._reset_state(True)
    assert evaluate_vqa.main(["--run", str(out), "--blind", "--max-questions", "20"]) == 0
    blind = json.loads((out / "vqa_scores_val2014_blind.json").read_text())
    assert blind["num_questions"] == 20


def test_test_split_results_cover_every_question(shapes_copy, tmp_path):
    (shapes_copy / "annotations/v2_mscoco_val2014_annotations.json").unlink()
    out = tmp_path / "vqa"
    assert finetune(shapes_copy, out, "vqa.init=null", "train.max_steps=1") == 0
    assert not (out / "vqa_scores_val2014.json").exists()
    results = json.loads((out / "vqa_results_val2014.json").read_text())
    questions = json.loads((shapes_copy / "annotations/v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    assert len(results) == len(questions["questions"])


def test_decoder_head_from_pretraining_with_distillation_then_evaluate(shapes_root, tmp_path, capsys):
    from accelerate.state import AcceleratorState

    from tcl.engine.weights import read_model_state

    assert pretrain.main(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
                          f"train.output_dir={tmp_path / 'pre'}", *FAST, "train.max_steps=2"]) == 0
    AcceleratorState._reset_state(True)
    out = tmp_path / "vqa"
    assert finetune(shapes_root, out, f"vqa.init={tmp_path / 'pre'}", "vqa.head=decoder", "loss.alpha=0.4",
                    "train.max_steps=3", "eval.max_questions=24", "eval.k_test=4") == 0
    state = read_model_state(out)
    assert any(name.startswith("momentum.models.text_decoder.") for name in state)  # the distillation teacher
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all(math.isfinite(m["loss/answer_nll"]) for m in metrics)
    assert metrics[-1]["alpha"] > 0  # the teacher was used
    vocabulary = AnswerVocabulary.from_json(out / "answer_list.json")
    results = json.loads((out / "vqa_results_val2014.json").read_text())
    assert len(results) == 24 and all(r["answer"] in vocabulary for r in results)
    scores = json.loads((out / "vqa_scores_val2014.json").read_text())
    assert scores["num_questions"] == 24 and 0.0 <= scores["overall"] <= 100.0
    AcceleratorState._reset_state(True)
    # evaluation of the saved run (no momentum teacher needed)
    capsys.readouterr()
    assert evaluate_vqa.main(["--run", str(out), "--max-questions", "8"]) == 0
    assert "VQA accuracy on val2014 (8 questions)" in capsys.readouterr().out
