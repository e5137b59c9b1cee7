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

    from tcl.engine.commands import finetune_vqa

    AcceleratorState._reset_state(True)
    out = tmp_path_factory.mktemp("vqa_run")
    assert finetune_vqa(["--config", str(REPO / "configs/vqa_tiny.yaml"), f"data.root={shapes_root}",
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
    assert config["architecture"] == "TCLVQAModel" and config["head"] == "decoder"  # vqa_tiny's head
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

    from tcl.engine.commands import pretrain

    AcceleratorState._reset_state(True)
    assert pretrain(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
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


# ---------------------------------------------------------------------------------------------------------------------
# tcl predict in batch mode: images decoded by a loader, each encoded once for all its questions; the precision


@pytest.fixture(scope="module")
def tiny_model_dir(shapes_root, tmp_path_factory) -> Path:
    from test_serve import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny_model")
    tiny_pipeline(shapes_root).save_pretrained(folder)
    return folder


def test_predict_encodes_each_image_once_and_answers_in_input_order(tiny_model_dir, shapes_root, tmp_path,
                                                                    monkeypatch):
    (tmp_path / "img.jpg").write_bytes(val_image(shapes_root, 6).read_bytes())
    images = [str(val_image(shapes_root, k)) for k in range(6)]
    # Questions of one image far apart; one image named three ways; a bad line in the middle.
    lines = [{"id": f"{k}-{j}", "image": images[k], "question": QUESTIONS[j]} for j in range(3) for k in range(6)]
    lines[9:9] = [{"image": "missing.jpg", "question": QUESTIONS[0]}]
    lines += [{"image": name, "question": QUESTIONS[j]}
              for j, name in enumerate(["img.jpg", "./img.jpg", str(tmp_path / "img.jpg")])]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    vqa = tcl.load_vqa(tiny_model_dir)
    expected = [None if line["image"] == "missing.jpg" else
                vqa(tmp_path / line["image"] if "img.jpg" in line["image"] else line["image"], line["question"])
                for line in lines]
    encoded = []
    vision = type(vqa.model.vision_encoder)
    forward_features = vision.forward_features
    monkeypatch.setattr(vision, "forward_features", lambda self, image: encoded.append(image.shape[0]) or
                        forward_features(self, image))

    def predict(out: str, *options: str) -> list[dict]:
        encoded.clear()
        assert cli.main(["predict", "--model", str(tiny_model_dir), "--input", str(tmp_path / "q.jsonl"),
                         "--output", str(tmp_path / out), *options]) == 1  # the missing image
        return [json.loads(line) for line in (tmp_path / out).read_text().splitlines()]

    records = predict("a.jsonl", "--batch-size", "7", "--workers", "1")
    assert sum(encoded) == 7 and max(encoded) > 1  # seven distinct images, each encoded once, several per pass
    assert [r["line"] for r in records] == list(range(1, len(lines) + 1))
    assert [r.get("id") for r in records] == [line.get("id") for line in lines]
    assert "line 10: " in records[9]["error"] and "missing.jpg" in records[9]["error"]
    for record, answers in zip(records, expected):  # as asked one by one (scores to float rounding)
        if answers is not None:
            assert [a["answer"] for a in record["answers"]] == [a["answer"] for a in answers], record["line"]
            assert [a["score"] for a in record["answers"]] == pytest.approx([a["score"] for a in answers], abs=1e-3)
    # In the main process, and with fewer questions per pass than an image has: each pass encodes its image.
    assert predict("b.jsonl", "--batch-size", "7", "--workers", "0") == records
    assert predict("c.jsonl", "--batch-size", "2", "--workers", "0") == records and sum(encoded) == 14


@pytest.mark.parametrize("setting, device, cuda_bf16, expected", [
    ("auto", "cpu", None, "fp32"), ("auto", "cuda", True, "bf16"), ("auto", "cuda:1", False, "fp32"),
    ("fp32", "cuda", True, "fp32"), ("bf16", "cpu", None, "bf16"), ("bf16", "cuda", True, "bf16"),
])
def test_inference_precision_resolution(setting, device, cuda_bf16, expected):
    from tcl.inference.precision import resolve_inference_precision

    assert resolve_inference_precision(setting, device, cuda_bf16) == expected


def test_inference_precision_errors_and_the_command_line_choices():
    from tcl.inference.precision import PRECISIONS, resolve_inference_precision
    from tcl.serving import serve_cli

    with pytest.raises(TclError, match="needs a GPU with bf16 support"):
        resolve_inference_precision("bf16", "cuda", cuda_bf16=False)
    with pytest.raises(TclError, match="one of auto, fp32, bf16"):
        resolve_inference_precision("fp16", "cpu")
    assert serve_cli.PRECISIONS == PRECISIONS  # spelled out there so that --help does not import torch


def test_bf16_precision_autocasts_the_model_and_keeps_fp32_scores(shapes_root):
    from test_serve import tiny_pipeline

    vqa = tiny_pipeline(shapes_root)
    dtypes = []
    vqa.model.answer_head.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    fp32 = vqa(val_image(shapes_root), QUESTIONS[0], top_k=3)
    assert vqa.precision == "fp32" and dtypes == [torch.float32]
    vqa.to("cpu", "bf16")
    bf16 = vqa(val_image(shapes_root), QUESTIONS[0], top_k=3)
    assert vqa.precision == "bf16" and dtypes[1] == torch.bfloat16
    assert all(abs(a["score"] - b["score"]) < 0.05 for a, b in zip(fp32, bf16))
    vqa.to("cpu")  # the setting stays until another is given
    assert vqa.precision == "bf16" and vqa.to("cpu", "auto").precision == "fp32"
    assert next(vqa.model.parameters()).dtype == torch.float32  # autocast: the weights stay fp32


def test_predict_refuses_bad_worker_counts(tiny_model_dir, shapes_root, capsys):
    assert cli.main(["predict", "--model", str(tiny_model_dir), "--input", "x.jsonl", "--workers", "-1"]) == 2
    assert "--workers must be 0" in capsys.readouterr().err
