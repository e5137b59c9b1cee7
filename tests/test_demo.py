"""The demo end to end on a very small budget: every stage runs, the results file has its keys, the saved model
answers questions."""

import json

import pytest

import tcl
from tcl.demo import format_results, run_demo

from conftest import TINY_GENERATOR

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_accelerate_state")]


def test_demo_runs_every_stage_and_saves_a_usable_model(shapes_root, tmp_path, capsys):
    out = tmp_path / "demo"
    world = [f"data.shapes.{key}={value}" for key, value in TINY_GENERATOR.items()]  # the fixture's, not regenerated
    results = run_demo(out, [f"data.root={shapes_root}", *world, "data.shapes.extra_relation_questions=0",
                             "train.batch_size=8", "model.queue_size=32",
                             "data.num_workers=0", "train.max_steps=2", "train.warmup_steps=1", "eval.batch_size=16"])
    saved = json.loads((out / "demo_results.json").read_text())
    assert saved == results
    for key in ("vqa_accuracy", "blind_accuracy", "scratch_accuracy", "hit_rate", "per_answer_type", "minutes",
                "model_blind_accuracy", "examples", "model_dir", "retrieval_i2t_r1", "retrieval_t2i_r1",
                "itm_accuracy"):
        assert key in saved, key
    assert all(0.0 <= saved[k] <= 100.0 for k in ("vqa_accuracy", "blind_accuracy", "scratch_accuracy", "hit_rate"))
    assert set(saved["per_answer_type"]) == {"yes/no", "number", "other"}
    from tcl.data.shapes import FAMILIES  # the generated annotations name each question's family

    assert set(saved["per_family"]) == set(saved["scratch_per_family"]) == set(FAMILIES)
    assert "per question family (pretrained / from scratch): color" in capsys.readouterr().out
    # Both blind baselines per answer type too (the plot draws them for each group).
    assert set(saved["blind_per_answer_type"]) == set(saved["model_blind_per_answer_type"]) == {"yes/no", "number",
                                                                                                "other"}
    # One example per family, fixed by the annotations alone, each shown with its image's objects.
    assert [e["family"] for e in saved["examples"]] == list(FAMILIES)
    assert all(len(e["top3"]) == 3 and e["objects"] for e in saved["examples"])
    printed = format_results(saved)
    for example in saved["examples"]:
        assert f"[{example['family']}] image: {'; '.join(example['objects'])}" in printed
    annotations = json.loads((shapes_root / "annotations/v2_mscoco_val2014_annotations.json").read_text())
    family_of = {a["question_id"]: a["question_family"] for a in annotations["annotations"]}
    assert all(family_of[e["question_id"]] == e["family"] for e in saved["examples"])
    assert (out / "demo_accuracy.png").stat().st_size > 0
    assert all(0.0 <= saved[k] <= 100.0 for k in ("retrieval_i2t_r1", "retrieval_t2i_r1", "itm_accuracy"))
    assert saved["retrieval_images"] == len(list((shapes_root / "images" / "val2014").iterdir()))  # all, below 100
    assert "fine-tuning from scratch" in format_results(saved) and "retrieval R@1" in format_results(saved)
    vqa = tcl.load_vqa(saved["model_dir"])
    image = shapes_root / f"images/val2014/COCO_val2014_{saved['examples'][0]['image_id']:012d}.jpg"
    assert vqa(image, saved["examples"][0]["question"], top_k=3) == saved["examples"][0]["top3"]


def test_stages_at_once_stop_the_others_and_name_the_failing_stage(shapes_root, tmp_path):
    from tcl.demo import run_stages_at_once
    from tcl.errors import TclError

    # "long" would pretrain for many minutes (its final checkpoint written last); "bad" fails at start-up.
    long_run = tmp_path / "long"
    stages = {"long": (["pretrain", "--config", "pretrain_tiny", f"data.root={shapes_root}", "data.num_workers=0",
                        "train.epochs=1000", f"train.output_dir={long_run}"], tmp_path / "long.log"),
              "bad": (["finetune-vqa", "--config", str(tmp_path / "missing.yaml"),
                       f"train.output_dir={tmp_path / 'bad'}"], tmp_path / "bad.log")}
    with pytest.raises(TclError, match=r"stage 'bad' failed with exit code \d+; its log .*bad\.log ends with:"
                                       r"(.|\n)*missing\.yaml"):
        run_stages_at_once(stages, poll_s=0.1)
    # run_stages_at_once waits for every process it stopped: had "long" not been stopped, the call would have
    # returned only after its last epoch, which ends with "pretraining done".
    assert "pretraining done" not in (tmp_path / "long.log").read_text()
