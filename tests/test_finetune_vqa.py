"""VQA fine-tuning and evaluation end to end on the generated data (classifier and decoder heads)."""

import json
import math
from pathlib import Path

import pytest

from tcl.engine.commands import evaluate_vqa, finetune_vqa, pretrain
from tcl.engine.finetune_vqa import AnswerSequenceCollator, TargetCollator
from tcl.evaluation.answers import AnswerVocabulary

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
FAST = ["train.batch_size=8", "model.queue_size=32", "data.num_workers=0", "train.warmup_steps=2",
        "eval.batch_size=16", "train.log_every=1"]


def finetune(root, out, *extra):
    return finetune_vqa(["--config", str(REPO / "configs/vqa_tiny.yaml"), f"data.root={root}",
                              f"train.output_dir={out}", *FAST, *extra])


def test_finetune_from_pretraining_then_evaluate(shapes_root, tmp_path, capsys):
    from accelerate.state import AcceleratorState

    assert pretrain(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
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
    complete = (out / "vqa_results_val2014.json").read_bytes()
    capsys.readouterr()
    assert evaluate_vqa(["--run", str(out), "--blind", "--max-questions", "20"]) == 0
    # A partial blind evaluation gets its own name: the complete results stay as they were.
    blind = json.loads((out / "vqa_scores_val2014_blind_first20.json").read_text())
    assert blind["num_questions"] == 20 and len(json.loads((out / "vqa_results_val2014_blind_first20.json").read_text())) == 20
    assert (out / "vqa_results_val2014.json").read_bytes() == complete
    printed = capsys.readouterr().out
    for name in ("vqa_results_val2014_blind_first20.json", "vqa_scores_val2014_blind_first20.json"):
        assert f"wrote {out / name}" in printed
    # --overwrite knows every file that pretraining, fine-tuning and their evaluations write.
    from tcl.engine.run_lock import LOCK_FILE, run_outputs

    assert sorted(p.name for p in run_outputs(out)) == sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
    assert sorted(p.name for p in run_outputs(tmp_path / "pre")) == sorted(
        p.name for p in (tmp_path / "pre").iterdir() if p.name != LOCK_FILE)


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

    from tcl.models.saving import read_model_state

    assert pretrain(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
                          f"train.output_dir={tmp_path / 'pre'}", *FAST, "train.max_steps=2"]) == 0
    AcceleratorState._reset_state(True)
    out = tmp_path / "vqa"
    assert finetune(shapes_root, out, f"vqa.init={tmp_path / 'pre'}", "vqa.head=decoder", "loss.distill=true",
                    "loss.alpha=0.4", "train.max_steps=3", "eval.max_questions=24", "eval.k_test=4") == 0
    state = read_model_state(out)
    assert any(name.startswith("momentum.models.text_decoder.") for name in state)  # the distillation teacher
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all(math.isfinite(m["loss/answer_nll"]) for m in metrics)
    assert metrics[-1]["alpha"] > 0  # the teacher was used
    vocabulary = AnswerVocabulary.from_json(out / "answer_list.json")
    results = json.loads((out / "vqa_results_val2014_first24.json").read_text())
    assert len(results) == 24 and all(r["answer"] in vocabulary for r in results)
    scores = json.loads((out / "vqa_scores_val2014_first24.json").read_text())
    assert scores["num_questions"] == 24 and 0.0 <= scores["overall"] <= 100.0
    AcceleratorState._reset_state(True)
    # evaluation of the saved run (no momentum teacher needed)
    capsys.readouterr()
    assert evaluate_vqa(["--run", str(out), "--max-questions", "8"]) == 0
    assert "VQA accuracy on val2014 (8 questions)" in capsys.readouterr().out


def write_vg_qa(folder: Path, shapes_root: Path, answer: str = "Circle.") -> Path:
    """An ALBEF-style vg_qa.json whose "Visual Genome" images are generated val images under their own root."""
    vg_root = folder / "vg_images"
    vg_root.mkdir()
    entries = []
    for k, image_id in enumerate(range(500_001, 500_005)):
        name = f"{image_id}.jpg"
        (vg_root / name).write_bytes((shapes_root / f"images/val2014/COCO_val2014_{image_id:012d}.jpg").read_bytes())
        entries.append({"question_id": 9_000_000 + k, "question": "what shape is on the left?", "answer": answer,
                        "image": name, "dataset": "vg"})
    path = folder / "vg_qa.json"
    path.write_text(json.dumps(entries))
    return vg_root


def test_visual_genome_questions_join_training_with_tcl_weights(shapes_root, tmp_path, tiny_config):
    from tcl.data.builders import build_tokenizer, build_vqa_dataset, vqa_collator

    vg_root = write_vg_qa(tmp_path, shapes_root)
    base = tiny_config(shapes_root, config="configs/vqa_tiny.yaml")
    config = tiny_config(shapes_root, f"data.vqa_extra_train=[{tmp_path / 'vg_qa.json'}]", f"data.vg_root={vg_root}",
                         config="configs/vqa_tiny.yaml")
    plain, dataset = build_vqa_dataset(base, train=True), build_vqa_dataset(config, train=True)
    assert len(dataset) == len(plain) + 4
    assert build_vqa_dataset(config, train=False).table.num_rows == build_vqa_dataset(base, train=False).table.num_rows
    tokenizer = build_tokenizer(config)
    vocabulary = AnswerVocabulary(["circle", "square", "yes"])
    vqa_sample, vg_sample = dataset[0], dataset[len(plain)]
    assert vg_sample["answers"] == ["Circle."] and vg_sample["weights"] == [0.5]
    classifier = TargetCollator(vqa_collator(config, tokenizer, train=True), vocabulary)
    targets = classifier([vqa_sample, vg_sample])["targets"]
    assert targets[1].tolist() == [0.5, 0.0, 0.0]  # the single VG answer gets TCL's weight, in normal form
    decoder = AnswerSequenceCollator(vqa_collator(config, tokenizer, train=True), tokenizer)
    answers = decoder([vqa_sample, vg_sample])["targets"]
    assert answers.weights[-1].item() == 0.5 and tokenizer.decode(answers.ids[-1]) == "circle"
    assert answers.counts.sum().item() == len(answers.weights) and answers.counts[1].item() == 1


def test_finetune_with_visual_genome_extra_data(shapes_root, tmp_path):
    vg_root = write_vg_qa(tmp_path, shapes_root, answer="hexagon")
    out = tmp_path / "vqa"
    assert finetune(shapes_root, out, "vqa.init=null", "vqa.head=decoder", "loss.alpha=0.0",
                    f"data.vqa_extra_train=[{tmp_path / 'vg_qa.json'}]", f"data.vg_root={vg_root}",
                    "train.max_steps=2", "--no-eval") == 0
    # single-answer VG questions are trained but never enter the answer list (TCL)
    assert "hexagon" not in AnswerVocabulary.from_json(out / "answer_list.json")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


# The tiny architecture on the generated data, for configs written for ViT-B/BERT-base on COCO.
TINY_MODEL = ["model.image_size=64", "model.patch_size=8", "model.vision_width=128", "model.vision_depth=4",
              "model.vision_heads=4", "model.hidden_size=128", "model.num_hidden_layers=4",
              "model.num_attention_heads=4", "model.intermediate_size=512", "model.max_position_embeddings=64",
              "model.fusion_layer=2", "model.vocab_size=null", "model.text_pretrained=null", "data.tokenizer=null",
              "data.vqa_train=[train2014]", "data.vqa_eval=val2014", "data.num_workers=0", "data.randaugment=false",
              "vqa.min_answer_count=1", "train.batch_size=8", "train.warmup_steps=2", "eval.batch_size=16",
              "eval.k_test=4", "vqa.init=null"]


def test_the_tcl_exact_vqa_recipe_loads_with_every_switch_and_trains(shapes_root, tmp_path):
    from tcl.config import load_config

    config = load_config("vqa_tcl_exact")
    assert config.loss.alpha == 0.0 and config.vqa.rank_score == "tcl" and config.vqa.merge_answers == "exact"
    assert config.train.lr_schedule == "epoch" and config.train.decay_temperature
    assert config.data.vqa_train == ["train2014", "val2014"] and config.data.vqa_extra_train == ["vg_qa.json"]
    assert config.vqa.head == "decoder" and config.eval.k_test == 128 and config.model.image_size == 384
    vg_root = write_vg_qa(tmp_path, shapes_root)
    out = tmp_path / "exact"
    assert finetune_vqa(["--config", "vqa_tcl_exact", f"data.root={shapes_root}", f"train.output_dir={out}",
                              *TINY_MODEL, f"data.vqa_extra_train=[{tmp_path / 'vg_qa.json'}]",
                              f"data.vg_root={vg_root}", "train.max_steps=3", "train.log_every=1",
                              "eval.max_questions=16"]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(math.isfinite(line["loss"]) for line in lines)
    assert json.loads((out / "vqa_scores_val2014_first16.json").read_text())["num_questions"] == 16


def test_exact_answer_merging_keeps_strings_apart_that_the_normal_form_joins():
    from tcl.evaluation.answers import merge_normalized

    answers, weights = ["Yes", "yes.", "yes", "two", "2"], [0.1, 0.1, 0.3, 0.2, 0.3]
    assert merge_normalized(answers, weights) == (["yes", "2"], pytest.approx([0.5, 0.5]))
    assert merge_normalized(answers, weights, exact=True) == (["Yes", "yes.", "yes", "two", "2"],
                                                              pytest.approx(weights))
    assert merge_normalized(["a", "a"], [0.3, 0.3], exact=True) == (["a"], pytest.approx([0.6]))


def test_finetuning_honours_train_deterministic(shapes_root, tmp_path, monkeypatch):
    """Fine-tuning sets torch's deterministic algorithms as pretraining does, and restores the setting after."""
    import torch

    import tcl.engine.finetune_vqa as engine

    seen = []
    step = engine.vqa_step

    def recording_step(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return step(*args, **kwargs)

    monkeypatch.setattr(engine, "vqa_step", recording_step)
    assert not torch.are_deterministic_algorithms_enabled()
    assert finetune(shapes_root, tmp_path / "vqa", "vqa.init=null", "train.max_steps=2", "train.deterministic=true",
                    "--no-eval") == 0
    assert seen == [True, True] and not torch.are_deterministic_algorithms_enabled()
