"""Bad inputs on real generated data: each case skipped and counted with its reason, or a DataError naming the file.

Every test damages files of a private copy of the generated dataset (``shapes_copy``). Indexes are cached by the
source files' size and modification time, so damage meant to be seen at indexing is done before the dataset is built,
and damage meant to be met at loading is done after.
"""

import json
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tcl.data.bad_samples import MAX_CONSECUTIVE_BAD, SkipReport
from tcl.data.builders import (build_loader, build_pretrain_dataset, build_tokenizer, build_vqa_dataset,
                               pretrain_collator, vqa_collator)
from tcl.text_cleaning import pre_caption
from tcl.errors import BadSampleError, DataError

from conftest import TINY_GENERATOR

# The tiny configs add the region classification and grounding terms, which need boxes in every batch; these tests
# exercise the TCL terms (or sources without instances files) on their own.
NO_REGIONS = ("loss.region_class_weight=0", "loss.grounding_weight=0")

MODES = ["skip", "error"]
# A hung DataLoader worker fails the test after this many seconds instead of blocking the suite.
LOADER_TIMEOUT_S = 60


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def _image(root: Path, split: str, image_id: int) -> Path:
    return root / "images" / split / f"COCO_{split}_{image_id:012d}.jpg"


def _captions(root: Path) -> Path:
    return root / "annotations" / "captions_train2014.json"


def _questions(root: Path, split: str = "val2014") -> Path:
    return root / "annotations" / f"v2_OpenEnded_mscoco_{split}_questions.json"


def _annotations(root: Path, split: str = "val2014") -> Path:
    return root / "annotations" / f"v2_mscoco_{split}_annotations.json"


def _edit_json(path: Path, edit) -> None:
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))


def _pretrain(root: Path, tiny_config, mode: str):
    return build_pretrain_dataset(tiny_config(root, f"data.on_bad_sample={mode}"))


def _vqa_config(root: Path, tiny_config, mode: str):
    return tiny_config(root, f"data.on_bad_sample={mode}", config="configs/vqa_tiny.yaml")


def _vqa_eval(root: Path, tiny_config, mode: str):
    return build_vqa_dataset(_vqa_config(root, tiny_config, mode), train=False)


def _rows(dataset, image: Path) -> list[int]:
    """Indices of the dataset rows that use ``image``."""
    relative = f"{image.parent.name}/{image.name}"
    rows = [i for i, value in enumerate(dataset.table["image"]) if value == relative]
    assert rows, f"no row uses {relative}"
    return rows


def _count_rows(path: Path, field: str, image_id: int) -> int:
    """How many entries of ``field`` in the JSON file ``path`` belong to ``image_id``."""
    count = sum(entry["image_id"] == image_id for entry in json.loads(path.read_text())[field])
    assert count > 0
    return count


def _assert_actionable(error: Exception | str, *names: object) -> None:
    """The message names every one of ``names`` (files, ids) and says how to go on."""
    message = str(error)
    for name in names:
        assert str(name) in message, f"{name} not in: {message}"
    assert "data.on_bad_sample=skip" in message, message


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGES = {
    # name: (how to damage the file, reason, phrase of the message)
    "deleted": (lambda path: path.unlink(), "missing image", "image file not found"),
    "zero-byte": (lambda path: path.write_bytes(b""), "empty image file", "empty (0 bytes)"),
    "truncated": (_cut_in_half, "corrupt image", "truncated, corrupt or not an image"),
    "text named .jpg": (lambda path: path.write_text("this is not a JPEG\n"), "corrupt image",
                        "truncated, corrupt or not an image"),
}


# ---------------------------------------------------------------------------------------------------------------------
# 1-2. Missing and damaged image files met while loading


def _damaged(shapes_copy, tiny_config, source: str, mode: str, damage: str):
    """The dataset of ``source`` with one of its images damaged (a train image for pretraining, a val image for
    VQA): (dataset, image, the rows that use it)."""
    if source == "pretrain":
        dataset, image = _pretrain(shapes_copy, tiny_config, mode), _image(shapes_copy, "train2014", 3)
    else:
        dataset, image = _vqa_eval(shapes_copy, tiny_config, mode), _image(shapes_copy, "val2014", 500_003)
    rows = _rows(dataset, image)
    DAMAGES[damage][0](image)
    return dataset, image, rows


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("source", ["pretrain", "vqa"])
def test_damaged_image_is_skipped_with_its_reason(shapes_copy, tiny_config, damage, source):
    dataset, _image_path, rows = _damaged(shapes_copy, tiny_config, source, "skip", damage)
    reason = DAMAGES[damage][1]

    # Each bad row is replaced by the next readable one, the first row of the following image, and counted once.
    replacement = rows[-1] + 1
    for row in rows:
        sample = dataset[row]
        assert sample["skipped"] == [reason]
        assert sample["image"].shape == (3, 64, 64)
        if source == "pretrain":
            assert sample["caption"] == pre_caption(dataset.table[replacement]["captions"][0])
        else:
            assert sample["question_id"] == dataset.table[replacement]["question_id"]
    assert dataset[rows[0] - 1]["skipped"] == [] and dataset[replacement]["skipped"] == []


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("source", ["pretrain", "vqa"])
def test_damaged_image_raises_naming_the_file(shapes_copy, tiny_config, damage, source):
    dataset, image, rows = _damaged(shapes_copy, tiny_config, source, "error", damage)
    _, reason, phrase = DAMAGES[damage]

    assert dataset[rows[0] - 1]["skipped"] == []
    with pytest.raises(BadSampleError) as caught:
        dataset[rows[0]]
    assert caught.value.reason == reason
    _assert_actionable(caught.value, image, f"sample {rows[0]}", phrase)


@pytest.mark.parametrize("mode", MODES)
def test_coco_image_missing_before_indexing(shapes_copy, tiny_config, mode):
    image = _image(shapes_copy, "train2014", 5)
    captions = json.loads(_captions(shapes_copy).read_text())["annotations"]
    expected = _count_rows(_captions(shapes_copy), "annotations", 5)
    image.unlink()
    if mode == "error":
        with pytest.raises(BadSampleError) as caught:
            _pretrain(shapes_copy, tiny_config, mode)
        assert caught.value.reason == "missing image"
        _assert_actionable(caught.value, _captions(shapes_copy), image, "image id 5")
        return
    dataset = _pretrain(shapes_copy, tiny_config, mode)
    assert dataset.skipped_at_indexing == Counter({"missing image": expected})
    assert len(dataset) == len(captions) - expected
    assert image.name not in "".join(dataset.table["image"])
    # The rows left are all readable: nothing is skipped when loading.
    assert all(dataset[i]["skipped"] == [] for i in range(0, len(dataset), 7))


def test_coco_image_restored_after_indexing_is_indexed_again(shapes_root, shapes_copy, tiny_config):
    image = _image(shapes_copy, "train2014", 5)
    expected = _count_rows(_captions(shapes_copy), "annotations", 5)
    image.unlink()
    missing = _pretrain(shapes_copy, tiny_config, "skip")
    assert missing.skipped_at_indexing == Counter({"missing image": expected})
    # The file is downloaded again: the cached index must not keep leaving its captions out.
    image.write_bytes(_image(shapes_root, "train2014", 5).read_bytes())
    restored = _pretrain(shapes_copy, tiny_config, "skip")
    assert restored.skipped_at_indexing == Counter()
    assert len(restored) == len(missing) + expected
    assert restored[_rows(restored, image)[0]]["skipped"] == []


# ---------------------------------------------------------------------------------------------------------------------
# 3. Image modes other than 8-bit RGB are converted, not skipped


def _as_grey(original: Image.Image, path: Path) -> np.ndarray:
    grey = original.convert("L")
    grey.save(path, format="JPEG", quality=95)
    return np.repeat(np.asarray(Image.open(path))[:, :, None], 3, axis=2)


def _as_rgba(original: Image.Image, path: Path) -> np.ndarray:
    rgba = np.dstack([np.asarray(original), np.full(original.size[::-1], 255, np.uint8)])
    rgba[:16, :16] = (0, 0, 0, 0)  # transparent black: must come out white, not black
    Image.fromarray(rgba, mode="RGBA").save(path, format="PNG")
    expected = rgba[:, :, :3].copy()
    expected[:16, :16] = 255
    return expected


def _as_cmyk(original: Image.Image, path: Path) -> np.ndarray:
    original.convert("CMYK").save(path, format="JPEG", quality=95)
    return np.asarray(Image.open(path).convert("RGB"))


def _as_16_bit(original: Image.Image, path: Path) -> np.ndarray:
    grey = np.asarray(original.convert("L")).astype(np.uint16) * 257  # the full 16-bit range
    Image.fromarray(grey).save(path, format="PNG")
    return np.repeat((grey // 257).astype(np.uint8)[:, :, None], 3, axis=2)


MODES_ON_DISK = {"L": _as_grey, "RGBA": _as_rgba, "CMYK": _as_cmyk, "I;16": _as_16_bit}


@pytest.mark.parametrize("mode", list(MODES_ON_DISK))
def test_other_image_modes_are_converted(shapes_copy, tiny_config, mode):
    image = _image(shapes_copy, "val2014", 500_002)
    dataset = _vqa_eval(shapes_copy, tiny_config, "skip")
    row = _rows(dataset, image)[0]
    original = Image.open(image).convert("RGB")
    expected = MODES_ON_DISK[mode](original, image)
    with Image.open(image) as stored:
        assert stored.mode == mode, "the test did not store the mode it means to test"

    sample = dataset[row]
    assert sample["skipped"] == []
    assert sample["question_id"] == dataset.table[row]["question_id"]
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.uint8
    # The evaluation transform leaves 64 x 64 images as they are, so the pixels can be compared directly.
    pixels = sample["image"].permute(1, 2, 0).numpy().astype(float)
    assert np.abs(pixels - expected).max() < 1.0


# ---------------------------------------------------------------------------------------------------------------------
# 4. Malformed JSON


def _cut_json(path: Path) -> str:
    """Rewrites ``path`` on several lines, cut in the middle; returns the ``file:line:column`` a parser reports."""
    text = json.dumps(json.loads(path.read_text()), indent=1)
    text = text[: len(text) // 2]
    path.write_text(text)
    with pytest.raises(json.JSONDecodeError) as caught:
        json.loads(text)
    assert caught.value.lineno > 1
    return f"{path}:{caught.value.lineno}:{caught.value.colno}:"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("which", ["captions", "questions"])
def test_cut_json_names_file_line_and_column(shapes_copy, tiny_config, which, mode):
    if which == "captions":
        location = _cut_json(_captions(shapes_copy))
        build = lambda: _pretrain(shapes_copy, tiny_config, mode)  # noqa: E731
    else:
        location = _cut_json(_questions(shapes_copy))
        build = lambda: _vqa_eval(shapes_copy, tiny_config, mode)  # noqa: E731
    # A damaged annotation file is never a skippable sample, whatever the policy.
    with pytest.raises(DataError) as caught:
        build()
    assert not isinstance(caught.value, BadSampleError)
    message = str(caught.value)
    assert message.startswith(location), message
    assert "malformed JSON" in message and "re-download or re-generate" in message


# ---------------------------------------------------------------------------------------------------------------------
# 5. Bad VQA questions and annotations


def _unknown_image(questions: dict, annotations: dict) -> int:
    questions["questions"][3]["image_id"] = 999_999
    return 3


def _duplicate_id(questions: dict, annotations: dict) -> int:
    questions["questions"][4]["question_id"] = questions["questions"][3]["question_id"]
    return 4


def _no_annotation(questions: dict, annotations: dict) -> int:
    question_id = questions["questions"][5]["question_id"]
    annotations["annotations"] = [a for a in annotations["annotations"] if a["question_id"] != question_id]
    return 5


def _no_answers(questions: dict, annotations: dict) -> int:
    question_id = questions["questions"][6]["question_id"]
    next(a for a in annotations["annotations"] if a["question_id"] == question_id)["answers"] = []
    return 6


QUESTION_PROBLEMS = {
    # name: (edit returning the position of the bad question, reason, phrase of the message)
    "unknown image id": (_unknown_image, "unknown image id", "unknown image id 999999"),
    "duplicated question id": (_duplicate_id, "duplicate question id", "duplicated question id"),
    "no annotation": (_no_annotation, "question without annotation", "no annotation for this question"),
    "empty answers": (_no_answers, "question without answers", "annotation has no answers"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("problem", list(QUESTION_PROBLEMS))
def test_bad_vqa_question(shapes_copy, tiny_config, problem, mode):
    edit, reason, phrase = QUESTION_PROBLEMS[problem]
    questions, annotations = json.loads(_questions(shapes_copy).read_text()), \
        json.loads(_annotations(shapes_copy).read_text())
    kept_ids = [q["question_id"] for q in questions["questions"]]
    position = edit(questions, annotations)
    bad_id = questions["questions"][position]["question_id"]
    _questions(shapes_copy).write_text(json.dumps(questions))
    _annotations(shapes_copy).write_text(json.dumps(annotations))

    if mode == "error":
        with pytest.raises(BadSampleError) as caught:
            _vqa_eval(shapes_copy, tiny_config, mode)
        assert caught.value.reason == reason
        _assert_actionable(caught.value, _questions(shapes_copy), f"question {position} (id {bad_id})", phrase)
        return
    dataset = _vqa_eval(shapes_copy, tiny_config, mode)
    assert dataset.skipped_at_indexing == Counter({reason: 1})
    del kept_ids[position]
    assert dataset.table["question_id"] == kept_ids


# ---------------------------------------------------------------------------------------------------------------------
# 6. Empty captions


@pytest.mark.parametrize("mode", MODES)
def test_empty_coco_caption(shapes_copy, tiny_config, mode):
    def empty_two(captions):
        captions["annotations"][7]["caption"] = ""
        captions["annotations"][12]["caption"] = "  ...  "

    _edit_json(_captions(shapes_copy), empty_two)
    first_empty = json.loads(_captions(shapes_copy).read_text())["annotations"][7]
    if mode == "error":
        with pytest.raises(BadSampleError) as caught:
            _pretrain(shapes_copy, tiny_config, mode)
        assert caught.value.reason == "empty caption"
        _assert_actionable(caught.value, _captions(shapes_copy), f"caption {first_empty['id']} ",
                           f"of image {first_empty['image_id']} is empty")
        return
    dataset = _pretrain(shapes_copy, tiny_config, mode)
    assert dataset.skipped_at_indexing == Counter({"empty caption": 2})
    captions = json.loads(_captions(shapes_copy).read_text())["annotations"]
    assert len(dataset) == len(captions) - 2
    assert all(pre_caption(c[0]) for c in dataset.table["captions"])


@pytest.mark.parametrize("mode", MODES)
def test_empty_albef_caption(shapes_copy, tiny_config, mode):
    by_image: dict[int, list[str]] = {}
    for ann in json.loads(_captions(shapes_copy).read_text())["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    entries = [{"image": f"images/train2014/COCO_train2014_{i:012d}.jpg", "caption": c} for i, c in by_image.items()]
    entries[2]["caption"] = ""
    entries[5]["caption"] = ["  ...  ", "", " "]
    entries[6]["caption"] = ["", "a red square"]  # one usable caption is enough
    (shapes_copy / "pairs.json").write_text(json.dumps(entries))
    config = tiny_config(shapes_copy, "data.pretrain_source=albef_json", "data.pretrain_files=[pairs.json]", *NO_REGIONS,
                         f"data.on_bad_sample={mode}")
    if mode == "error":
        with pytest.raises(BadSampleError) as caught:
            build_pretrain_dataset(config)
        assert caught.value.reason == "empty caption"
        _assert_actionable(caught.value, shapes_copy / "pairs.json", "entry 2:", entries[2]["image"], "empty caption")
        return
    dataset = build_pretrain_dataset(config)
    assert dataset.skipped_at_indexing == Counter({"empty caption": 2})
    assert len(dataset) == len(entries) - 2
    # Entry 6 is row 4 once entries 2 and 5 are left out.
    assert dataset.table[4]["captions"] == ["a red square"]
    assert dataset[4]["caption"] == "a red square" and dataset[4]["skipped"] == []


# ---------------------------------------------------------------------------------------------------------------------
# 7. Through DataLoader workers


def _loader_setup(root: Path, tiny_config, source: str, mode: str):
    """(dataset, collate, split) of a source built before any damage to image files."""
    if source == "pretrain":
        config = tiny_config(root, f"data.on_bad_sample={mode}")
        dataset = build_pretrain_dataset(config)
        return dataset, pretrain_collator(config, build_tokenizer(config)), "train2014"
    config = _vqa_config(root, tiny_config, mode)
    dataset = build_vqa_dataset(config, train=False)
    return dataset, vqa_collator(config, build_tokenizer(config), train=False), "val2014"


def _loader(dataset, collate, batch_size: int):
    loader = build_loader(dataset, collate, batch_size, shuffle=False, num_workers=2)
    # A worker that hangs instead of reporting its error fails the test rather than blocking it.
    loader.timeout = LOADER_TIMEOUT_S
    return loader


@pytest.mark.parametrize("source", ["pretrain", "vqa"])
def test_loader_skips_keep_batches_full_and_count_every_skip(shapes_copy, tiny_config, source):
    split = "train2014" if source == "pretrain" else "val2014"
    first = 1 if source == "pretrain" else 500_001
    last = first + TINY_GENERATOR["train_images" if source == "pretrain" else "val_images"] - 1
    # Left out when indexing: a caption of a missing image file, a question of an unknown image id.
    _image(shapes_copy, split, first + 10).unlink()
    if source == "pretrain":
        at_indexing = Counter({"missing image": _count_rows(_captions(shapes_copy), "annotations", first + 10)})
    else:
        at_indexing = Counter({"unknown image id": _count_rows(_questions(shapes_copy), "questions", first + 10)})
    dataset, collate, _ = _loader_setup(shapes_copy, tiny_config, source, "skip")
    assert dataset.skipped_at_indexing == at_indexing

    # Met when loading: four damaged files, two of them next to each other, one being the very last image.
    damaged = {first + 1: "deleted", first + 4: "zero-byte", first + 5: "truncated", last: "text named .jpg"}
    expected = Counter()
    for image_id, damage in damaged.items():
        image = _image(shapes_copy, split, image_id)
        expected[DAMAGES[damage][1]] += len(_rows(dataset, image))
        DAMAGES[damage][0](image)

    report = SkipReport(dataset.skipped_at_indexing)
    batch_size = 8
    sizes = []
    for batch in _loader(dataset, collate, batch_size):
        sizes.append(batch["input_ids"].shape[0])
        assert batch["image"][batch.get("image_index", slice(None))].shape[0] == sizes[-1]  # each question has its image
        report.update(batch)
    full, rest = divmod(len(dataset), batch_size)
    assert sizes == [batch_size] * full + ([rest] if rest else [])
    assert report.at_loading == expected
    assert report.at_indexing == at_indexing
    assert report.total == sum(expected.values()) + sum(at_indexing.values())
    text = report.format()
    assert text.startswith(f"skipped {report.total} bad samples (when indexing: ")
    loading = text.split("when loading: ")[1]
    for reason, count in expected.items():
        assert f"{reason} {count}" in loading


@pytest.mark.parametrize("source", ["pretrain", "vqa"])
def test_loader_error_reaches_the_main_process(shapes_copy, tiny_config, source):
    dataset, collate, split = _loader_setup(shapes_copy, tiny_config, source, "error")
    first = 1 if split == "train2014" else 500_001
    image = _image(shapes_copy, split, first + 6)
    _cut_in_half(image)
    batches, message = [], None
    try:
        for batch in _loader(dataset, collate, 8):
            batches.append(batch)
    except BadSampleError as error:
        message = str(error)
        # The traceback's frames hold the loader's iterator in a reference cycle. Left to the garbage collector, which
        # finalises the worker queues first, its workers would take 2 x 5 s to stop; freed now, they stop at once.
        traceback.clear_frames(error.__traceback__)
    assert message is not None, "the damaged image did not raise"
    _assert_actionable(message, image, "truncated, corrupt or not an image")
    # Every batch before the damaged image arrived, in order; the error came with the first batch holding it.
    assert len(batches) == _rows(dataset, image)[0] // 8


# ---------------------------------------------------------------------------------------------------------------------
# 8. A misconfigured dataset


def test_consecutive_bad_samples_mean_misconfigured_data(shapes_copy, tiny_config):
    dataset = _pretrain(shapes_copy, tiny_config, "skip")
    image_id, bad_rows = 1, []
    while len(bad_rows) < MAX_CONSECUTIVE_BAD:
        image = _image(shapes_copy, "train2014", image_id)
        bad_rows += _rows(dataset, image)
        image.unlink()
        image_id += 1
    assert bad_rows == list(range(len(bad_rows)))

    # One readable row within reach: the sample is replaced.
    last_chance = len(bad_rows) - (MAX_CONSECUTIVE_BAD - 1)
    assert dataset[last_chance]["skipped"] == ["missing image"]
    # Nothing readable in MAX_CONSECUTIVE_BAD rows: a configuration problem, not a bad sample to skip.
    with pytest.raises(DataError) as caught:
        dataset[last_chance - 1]
    assert not isinstance(caught.value, BadSampleError)
    message = str(caught.value)
    assert "the data is probably misconfigured" in message, message
    assert f"{MAX_CONSECUTIVE_BAD} unreadable samples in a row" in message
    assert "missing image" in message and "data.image_root" in message


def test_skip_warnings_are_rate_limited_and_every_skip_is_counted(monkeypatch, caplog):
    from tcl.data import bad_samples

    monkeypatch.setattr(bad_samples, "WARN_FIRST", 2)
    monkeypatch.setattr(bad_samples, "WARN_EVERY", 5)
    monkeypatch.setattr(bad_samples, "_warned", Counter())

    def load(position):
        if position % 2 == 0:
            raise BadSampleError(f"image {position} is cut short", "corrupt image")
        return {"position": position}

    samples = [bad_samples.load_with_policy(load, index, 100, "skip") for index in range(0, 24, 2)]
    assert [s["skipped"] for s in samples] == [["corrupt image"]] * 12
    lines = [r.getMessage() for r in caplog.records if "skipping sample" in r.getMessage()]
    assert len(lines) == 4  # the first 2, then the 5th and the 10th
    assert "10 'corrupt image' samples skipped by this process so far" in lines[-1]


def test_skipped_samples_are_counted_in_the_metrics_lines(shapes_copy, tmp_path):
    from tcl.engine.commands import pretrain as main

    images = sorted((shapes_copy / "images" / "train2014").glob("*.jpg"))
    for image in images[::2]:  # every other image cut short: at most 5 bad captions in a row
        image.write_bytes(image.read_bytes()[:100])
    out = tmp_path / "run"
    config = Path(__file__).resolve().parents[2] / "configs/pretrain_tiny.yaml"
    assert main(["--config", str(config), f"data.root={shapes_copy}",
                 f"train.output_dir={out}", "train.batch_size=8", "model.queue_size=32", "data.num_workers=0",
                 "train.max_steps=3", "train.log_every=1", "eval.retrieval_file=null", *NO_REGIONS]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    counts = [line.get("skipped/corrupt image", 0) for line in lines]
    assert counts[-1] > 0 and counts == sorted(counts)  # a running count
