"""What users feed a trained model: empty, very long and non-ASCII questions, images of every size and mode,
and batch files with bad lines (an error record for each, the rest answered)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tcl
from tcl import cli
from tcl.errors import BadSampleError
from test_serve import tiny_pipeline


@pytest.fixture(scope="module")
def model_dir(shapes_root, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    tiny_pipeline(shapes_root).save_pretrained(folder)
    return folder


def val_image(shapes_root, k=0) -> Path:
    return shapes_root / f"images/val2014/COCO_val2014_{500_001 + k:012d}.jpg"


@pytest.mark.parametrize("question", [
    "what " * 5000 + "color is the circle?",                      # 30,000 characters: cut to 50 words
    "¿Qué color tiene el círculo? 圆圈是什么颜色？ ما لون الدائرة؟",  # Spanish, Chinese, Arabic (right to left)
    "what colour is the 🟥 circle 👀?",                            # emoji
    "what\u200b color\u0301 is\u00a0the circle\ufeff?",              # zero-width, combining, no-break spaces
    "WHAT COLOR IS THE CIRCLE",                                  # shouting
])
def test_long_and_non_ascii_questions_are_answered(model_dir, shapes_root, question):
    answers = tcl.load_vqa(model_dir)(val_image(shapes_root), question, top_k=3)
    assert len(answers) == 3 and all(0 <= a["score"] <= 1 for a in answers)


@pytest.mark.parametrize("question", ["", "   ", "?!", "...", "\n\t"])
def test_empty_questions_say_so(model_dir, shapes_root, question):
    with pytest.raises(ValueError, match="empty"):
        tcl.load_vqa(model_dir)(val_image(shapes_root), question)


def test_images_of_every_kind_size_and_mode(model_dir, shapes_root):
    vqa = tcl.load_vqa(model_dir)
    path = val_image(shapes_root)
    pil = Image.open(path)
    kinds = [path, str(path), path.read_bytes(), pil, np.asarray(pil), np.asarray(pil.convert("L")),
             np.asarray(pil.convert("RGBA")), pil.convert("P"), np.asarray(pil).astype(np.float32) / 255.0]
    results = vqa(kinds, ["what color is the circle?"] * len(kinds), top_k=1)
    assert len({r[0]["answer"] for r in results[:5]}) == 1  # the same pixels give the same answer
    odd = [Image.new("RGB", (1, 1)), Image.new("RGB", (2000, 1), "white"), Image.new("L", (1, 3000)),
           Image.new("RGBA", (300, 200), (0, 0, 0, 0)), Image.new("I;16", (50, 50)), Image.new("F", (40, 30)),
           Image.new("CMYK", (64, 64)), Image.new("1", (64, 64)), Image.new("LA", (64, 64)),
           np.zeros((64, 64), dtype=bool), np.full((8, 8, 1), 65535, dtype=np.uint16)]
    answers = vqa(odd, ["how many shapes are there?"] * len(odd), top_k=2)
    assert [len(a) for a in answers] == [2] * len(odd)


def test_image_errors_say_what_to_fix(model_dir, shapes_root, tmp_path):
    vqa = tcl.load_vqa(model_dir)
    image = val_image(shapes_root)
    with pytest.raises(ValueError, match="2 images but 1 questions"):
        vqa([image, image], ["what color is the circle?"])
    with pytest.raises(ValueError, match="top_k"):
        vqa(image, "what?", top_k=0)
    with pytest.raises(BadSampleError, match="cannot use a dict"):
        vqa({"not": "an image"}, "what color is it?")
    with pytest.raises(BadSampleError, match="not found"):
        vqa(tmp_path / "missing.jpg", "what color is it?")
    with pytest.raises(BadSampleError) as bad:
        vqa(np.zeros((4, 4, 7), dtype=np.uint8), "what color is it?")
    assert bad.value.reason == "unsupported image"
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 10_000)).save(bomb)  # 120 million pixels in a few kilobytes
    with pytest.raises(BadSampleError) as big:
        vqa(bomb, "what color is it?")
    assert big.value.reason == "image too large"


def test_batch_file_with_bad_lines_answers_the_rest(model_dir, shapes_root, tmp_path, capsys):
    (tmp_path / "not_an_image.jpg").write_text("hello")
    (tmp_path / "img.jpg").write_bytes(val_image(shapes_root, 1).read_bytes())
    (tmp_path / "a_folder.jpg").mkdir()
    lines = [json.dumps({"id": "a", "image": "img.jpg", "question": "how many shapes are there?"}).encode(),
             b"{not json",
             json.dumps({"image": "missing.jpg", "question": "what color is the circle?"}).encode(),
             json.dumps({"image": "not_an_image.jpg", "question": "what color is the circle?"}).encode(),
             json.dumps({"image": "img.jpg", "question": "   "}).encode(),
             json.dumps({"question": "no image?"}).encode(),
             json.dumps(["a", "list"]).encode(),
             json.dumps({"id": "b", "image": str(val_image(shapes_root, 2)), "question": "où est le cercle? 🟥"},
                        ensure_ascii=False).encode(),
             b"",                                                                  # a blank line
             b'{"image": "img.jpg", "question": "what \xff\xfe color?"}',       # bytes that are not UTF-8
             json.dumps({"image": "a_folder.jpg", "question": "what?"}).encode(),
             json.dumps({"image": "img.jpg", "question": "what? " * 3000}).encode()]
    (tmp_path / "q.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "a.jsonl"
    code = cli.main(["predict", "--model", str(model_dir), "--input", str(tmp_path / "q.jsonl"), "--output",
                     str(out), "--batch-size", "3"])
    assert code == 1  # some lines failed
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in records] == list(range(1, 13))
    answered = {r["line"] for r in records if "answers" in r}
    assert answered == {1, 8, 12}
    assert records[0]["id"] == "a" and len(records[0]["answers"]) == 5 and records[7]["id"] == "b"
    errors = {r["line"]: r["error"] for r in records if "error" in r}
    assert "invalid JSON" in errors[2] and "missing.jpg" in errors[3] and "not_an_image.jpg" in errors[4]
    assert "empty" in errors[5] and "missing \"image\"" in errors[6] and "JSON object" in errors[7]
    assert "invalid JSON" in errors[9] and "a_folder.jpg" in errors[11]
    assert "line 10: not UTF-8 (byte 0xff" in errors[10]  # reported, never silently read as U+FFFD
    assert "answered 3 of 12 lines; 9 failed" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_bytes(lines[0] + b"\n")
    assert cli.main(["predict", "--model", str(model_dir), "--input", str(good), "--output",
                     str(tmp_path / "g.jsonl")]) == 0


# Word pieces of made-up words: three 26-letter "words" tokenise past the tiny model's 64 positions.
GIBBERISH = "qwertyuiopasdfghjklzxcvbnm qwertyuiopasdfghjklzxcvbnm qwertyuiopasdfghjklzxcvbnm"


def test_questions_past_the_position_limit_are_answered(model_dir, shapes_root, capsys):
    vqa = tcl.load_vqa(model_dir)
    pieces = vqa.processor.tokenizer.encode_texts([GIBBERISH]).input_ids.shape[1]
    assert pieces > vqa.model.model_config.max_position_embeddings  # the case that crashed
    assert len(vqa(val_image(shapes_root), GIBBERISH, top_k=2)) == 2
    assert cli.main(["predict", "--model", str(model_dir), "--image", str(val_image(shapes_root)),
                     "--question", GIBBERISH]) == 0
    assert capsys.readouterr().out.strip()


def test_batch_lines_with_a_bom_or_a_lone_surrogate(model_dir, shapes_root, tmp_path):
    image = str(val_image(shapes_root))
    lines = [b"\xef\xbb\xbf" + json.dumps({"image": image, "question": "how many shapes are there?"}).encode(),
             b'{"image": "' + image.encode() + b'", "question": "what color \\ud800 is it?"}',
             json.dumps({"image": image, "question": "what color is the circle?"}).encode()]
    (tmp_path / "q.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "a.jsonl"
    assert cli.main(["predict", "--model", str(model_dir), "--input", str(tmp_path / "q.jsonl"), "--output",
                     str(out)]) == 1
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3]
    assert "answers" in records[0] and "answers" in records[2]
    assert "surrogate" in records[1]["error"] and "question" not in records[1]


def test_folders_that_are_missing_or_of_the_wrong_kind(model_dir, shapes_root, tmp_path, monkeypatch):
    from tcl.config import load_config, save_config
    from tcl.errors import TclError

    with pytest.raises(TclError, match="no such folder"):
        tcl.load_pretrained(tmp_path / "missing")  # an absolute path: never sent to the hub
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(TclError, match="runs/pretrain_tiny: no such folder"):
        tcl.load_vqa("runs/pretrain_tiny")  # looks like user/repo, but runs/ is a folder here
    pretraining = tmp_path / "runs" / "pre"
    save_config(load_config(Path(__file__).resolve().parents[2] / "configs/pretrain_tiny.yaml",
                            [f"data.root={shapes_root}"]), pretraining / "config.yaml")
    with pytest.raises(TclError, match="not a VQA fine-tuning run.*tcl finetune-vqa vqa.init="):
        tcl.load_vqa(pretraining)
    with pytest.raises(BadSampleError, match="URLs are not supported"):
        tcl.load_vqa(model_dir)("https://example.com/cat.jpg", "what is it?")
