"""Inference for users: save/load round trips, the VQA pipeline on every image kind, image–text scores, and the
``tcl predict`` command line in single and batch mode (with bad lines)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tcl
from tcl import cli
from tcl.config import load_config
from tcl.data.builders import build_tokenizer
from tcl.errors import TclError
from tcl.inference import TCLProcessor, VQAPipeline
from tcl.inference.processor import ImageSettings
from tcl.models import TCLPretrainModel
from tcl.models.vqa import TCLVQAModel

REPO = Path(__file__).resolve().parents[1]
FAST = ["train.batch_size=8", "model.queue_size=32", "data.num_workers=0", "train.warmup_steps=2",
        "eval.batch_size=16"]


@pytest.fixture(scope="module")
def vqa_run(shapes_root, tmp_path_factory):
    """A fine-tuning run folder of the classifier head (a few steps, evaluation skipped)."""
    from accelerate.state import AcceleratorState

    from tcl.engine import finetune_vqa

    AcceleratorState._reset_state(True)
    out = tmp_path_factory.mktemp("vqa_run")
    assert finetune_vqa.main(["--config", str(REPO / "configs/vqa_tiny.yaml"), f"data.root={shapes_root}",
                              f"train.output_dir={out}", "vqa.init=null", "train.max_steps=3", "--no-eval",
                              *FAST]) == 0
    AcceleratorState._reset_state(True)
    return out


def val_image(shapes_root, k=0) -> Path:
    return shapes_root / f"images/val2014/COCO_val2014_{500_001 + k:012d}.jpg"


QUESTIONS = ["what color is the circle?", "how many shapes are there?", "is there a red square?"]


def test_pipeline_from_a_run_round_trips_through_save_pretrained(vqa_run, shapes_root, tmp_path):
    vqa = tcl.load_vqa(vqa_run)
    images = [val_image(shapes_root, k) for k in range(3)]
    before = vqa(images, QUESTIONS, top_k=3)
    assert len(before) == 3 and all(len(answers) == 3 for answers in before)
    assert all(a["answer"] in vqa.processor.answers and 0.0 <= a["score"] <= 1.0 for r in before for a in r)
    vqa.save_pretrained(tmp_path / "model")
    saved = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "answer_list.json", "tokenizer.json"} <= saved
    config = json.loads((tmp_path / "model/config.json").read_text())
    assert config["architecture"] == "TCLVQAModel" and config["head"] == "classifier"
    loaded = tcl.load_vqa(tmp_path / "model")
    assert loaded(images, QUESTIONS, top_k=3) == before
    one = loaded(str(images[0]), QUESTIONS[0], top_k=2)
    assert one == before[0][:2]
    for name, tensor in vqa.model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name


def test_loaders_take_a_device_and_long_lists_show_progress(vqa_run, shapes_root, capsys):
    assert tcl.load_vqa(vqa_run, device="meta").device.type == "meta"  # moved, without needing a GPU here
    vqa = tcl.load_vqa(vqa_run)
    images = [val_image(shapes_root, k) for k in range(3)]
    vqa(images, QUESTIONS, batch_size=8)
    assert "answer" not in capsys.readouterr().err  # one batch: no bar
    vqa(images, QUESTIONS, batch_size=1)
    assert "3/3" in capsys.readouterr().err  # more than one batch: a bar, like tcl predict's
    vqa(images, QUESTIONS, batch_size=1, progress=False)
    assert "3/3" not in capsys.readouterr().err


def test_decoder_head_round_trips_without_its_momentum_teacher(vqa_run, tmp_path):
    config = load_config(REPO / "configs/vqa_tiny.yaml", ["vqa.head=decoder"])
    processor = tcl.load_vqa(vqa_run).processor
    torch.manual_seed(0)
    model = TCLVQAModel(config.model, len(processor.tokenizer), len(processor.answers), head="decoder", distill=True)
    pipeline = VQAPipeline(model, processor, k_test=5, rank_score="tcl")
    image = np.full((40, 50, 3), 200, dtype=np.uint8)
    before = pipeline(image, "is there a red square?", top_k=3)
    pipeline.save_pretrained(tmp_path / "decoder")
    from safetensors.torch import load_file

    assert not any(k.startswith("momentum.") for k in load_file(str(tmp_path / "decoder/model.safetensors")))
    loaded = tcl.load_vqa(tmp_path / "decoder")
    assert (loaded.k_test, loaded.rank_score, loaded.model.head) == (5, "tcl", "decoder")
    assert loaded.model.text_decoder.cls.predictions.decoder.weight is \
        loaded.model.text_decoder.bert.embeddings.word_embeddings.weight
    assert loaded(image, "is there a red square?", top_k=3) == before
    assert sum(a["score"] for a in before) <= 1.0 + 1e-6  # a softmax over the ranked candidates


def test_pretraining_model_round_trip_and_image_text_scores(shapes_root, tmp_path):
    config = load_config(REPO / "configs/pretrain_tiny.yaml", [f"data.root={shapes_root}", "model.queue_size=32"])
    tokenizer = build_tokenizer(config)
    torch.manual_seed(0)
    model = TCLPretrainModel(config.model, config.loss, len(tokenizer)).eval()
    model.image_queue.ptr[0] = 8
    processor = TCLProcessor(tokenizer, ImageSettings(image_size=64))
    model.save_pretrained(tmp_path / "pre")
    processor.save_pretrained(tmp_path / "pre")
    loaded = tcl.load_pretrained(tmp_path / "pre")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name  # momentum copies and queues included
    assert loaded.mlm_head.predictions.decoder.weight is loaded.text_encoder.embeddings.word_embeddings.weight
    images = [val_image(shapes_root, k) for k in range(3)]
    texts = ["a red circle.", "two shapes on a light background.", "squares colored blue."]
    scores = tcl.score_image_text(loaded, images, texts)
    similarity, itm = np.array(scores["similarity"]), np.array(scores["itm"])
    assert similarity.shape == itm.shape == (3, 3)
    assert (np.abs(similarity) <= 1.0 + 1e-5).all() and ((itm >= 0) & (itm <= 1)).all()
    # the ITM of pair (i, j) equals scoring that pair alone
    alone = tcl.score_image_text(loaded, images[2], texts[1])
    assert alone["itm"][0][0] == pytest.approx(itm[2, 1], abs=1e-5)
    assert alone["similarity"][0][0] == pytest.approx(similarity[2, 1], abs=1e-5)


def test_load_pretrained_from_a_pretraining_run(shapes_root, tmp_path):
    from accelerate.state import AcceleratorState

    from tcl.engine import pretrain

    AcceleratorState._reset_state(True)
    assert pretrain.main(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
                          f"train.output_dir={tmp_path / 'pre'}", *FAST, "train.max_steps=1"]) == 0
    AcceleratorState._reset_state(True)
    model = tcl.load_pretrained(tmp_path / "pre")
    assert isinstance(model, TCLPretrainModel) and model.processor is not None
    moved = tcl.load_pretrained(tmp_path / "pre", device="meta")
    assert next(moved.parameters()).device.type == "meta" and moved.processor is not None
    assert len(tcl.score_image_text(model, [val_image(shapes_root)], ["a red circle.", "a cross."])["itm"][0]) == 2


def test_loading_errors_name_the_problem(vqa_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TclError, match="could not provide it"):
        tcl.load_vqa("nobody/no-such-model")
    with pytest.raises(TclError, match="deeper: no such folder"):
        tcl.load_vqa(tmp_path / "missing" / "deeper")
    vqa = tcl.load_vqa(vqa_run)
    vqa.save_pretrained(tmp_path / "m")
    with pytest.raises(TclError, match="holds a TCLVQAModel model, not a TCLPretrainModel"):
        tcl.load_pretrained(tmp_path / "m")
    (tmp_path / "m/config.json").write_text("{broken")
    with pytest.raises(TclError, match="invalid JSON at line 1"):
        tcl.load_vqa(tmp_path / "m")


def test_predict_command_single_question(vqa_run, shapes_root, capsys):
    code = cli.main(["predict", "--model", str(vqa_run), "--image", str(val_image(shapes_root)), "--question",
                     "what color is the circle?", "--top-k", "2"])
    assert code == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["question"] == "what color is the circle?" and len(record["answers"]) == 2
    assert cli.main(["predict", "--model", str(vqa_run), "--image", "nowhere.jpg", "--question", "what?"]) == 2
    assert "nowhere.jpg" in capsys.readouterr().err
