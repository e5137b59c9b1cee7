"""The embedded dataset: deterministic, in the official COCO/VQA layouts, balanced, with annotator noise."""

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tcl.make_data import make_shapes_dataset, summarize
from tcl.data.shapes import ANSWER_TYPES, FAMILY_OF_QUESTION_TYPE, SceneObject, refer

from conftest import TINY_GENERATOR


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(shapes_root, tmp_path):
    again = tmp_path / "again"
    make_shapes_dataset(again, show_progress=False, **TINY_GENERATOR)
    assert _digest(again) == _digest(shapes_root)


def test_different_seed_gives_different_data(shapes_root, tmp_path):
    other = tmp_path / "other"
    make_shapes_dataset(other, show_progress=False, **{**TINY_GENERATOR, "seed": 4})
    a, b = _digest(shapes_root), _digest(other)
    assert a.keys() == b.keys()
    assert a["annotations/captions_train2014.json"] != b["annotations/captions_train2014.json"]


def test_official_file_layout(shapes_root):
    for split, first_id in (("train2014", 1), ("val2014", 500_001)):
        image = shapes_root / "images" / split / f"COCO_{split}_{first_id:012d}.jpg"
        with Image.open(image) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (64, 64))
        for name in (f"captions_{split}.json", f"v2_OpenEnded_mscoco_{split}_questions.json",
                     f"v2_mscoco_{split}_annotations.json"):
            assert (shapes_root / "annotations" / name).is_file()
    assert (shapes_root / "tokenizer" / "tokenizer.json").is_file()


def test_pycocotools_loads_captions(shapes_root):
    from pycocotools.coco import COCO

    coco = COCO(str(shapes_root / "annotations" / "captions_train2014.json"))
    assert len(coco.getImgIds()) == TINY_GENERATOR["train_images"]
    for image_id in coco.getImgIds():
        captions = [a["caption"] for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id))]
        assert len(captions) == 5 and len(set(captions)) == 5
        file_name = coco.loadImgs(image_id)[0]["file_name"]
        assert (shapes_root / "images" / "train2014" / file_name).is_file()


def test_official_vqa_fields_and_types(shapes_root):
    questions = json.loads((shapes_root / "annotations/v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    annotations = json.loads((shapes_root / "annotations/v2_mscoco_val2014_annotations.json").read_text())
    assert questions["task_type"] == "Open-Ended" and questions["data_subtype"] == "val2014"
    per_image = Counter(q["image_id"] for q in questions["questions"])
    assert len(per_image) == TINY_GENERATOR["val_images"] and max(per_image.values()) <= 6
    assert sum(per_image.values()) >= 5 * TINY_GENERATOR["val_images"]
    for q in questions["questions"]:
        assert set(q) == {"question_id", "image_id", "question"}
        assert isinstance(q["question_id"], int) and isinstance(q["image_id"], int) and q["question"].endswith("?")
    by_id = {q["question_id"]: q for q in questions["questions"]}
    for ann in annotations["annotations"]:
        # The official fields, and the generator's family (an extra field, which the official readers ignore).
        assert set(ann) == {"question_id", "image_id", "question_type", "answer_type", "multiple_choice_answer",
                            "answers", "question_family"}
        assert ann["answer_type"] in {"yes/no", "number", "other"}
        assert by_id[ann["question_id"]]["image_id"] == ann["image_id"]
        assert ann["question_type"] in FAMILY_OF_QUESTION_TYPE
        assert [a["answer_id"] for a in ann["answers"]] == list(range(1, 11))
        for answer in ann["answers"]:
            assert set(answer) == {"answer", "answer_confidence", "answer_id"}
            assert answer["answer_confidence"] in {"yes", "maybe", "no"}
        most = Counter(a["answer"] for a in ann["answers"]).most_common(1)[0][0]
        assert ann["multiple_choice_answer"] == most


def test_every_family_and_answer_type_present(shapes_root):
    summary = summarize(shapes_root)
    families = summary["splits"]["train2014"]["questions_per_family"]
    assert set(families) == set(ANSWER_TYPES)


@pytest.fixture(scope="module")
def larger(tmp_path_factory):
    root = tmp_path_factory.mktemp("larger")
    return make_shapes_dataset(root, train_images=300, val_images=150, show_progress=False, seed=1)


def test_answers_balanced_within_families(larger):
    for family, answers in larger["splits"]["train2014"]["answers_per_family"].items():
        counts = np.array(list(answers.values()))
        if family in ("existence", "relation", "position", "color", "shape"):
            # Every answer of these families is achievable in most scenes: nearly uniform.
            assert counts.max() <= 1.5 * counts.min() + 3, (family, answers)


def test_blind_baseline_is_far_from_solving_it(larger):
    assert 20.0 < larger["blind_val_accuracy"] < 60.0


def test_annotator_noise_makes_soft_scores_matter(shapes_root):
    annotations = json.loads((shapes_root / "annotations/v2_mscoco_train2014_annotations.json").read_text())
    disagreements = [len({a["answer"] for a in ann["answers"]}) > 1 for ann in annotations["annotations"]]
    assert 0.3 < np.mean(disagreements) < 0.9


def test_referring_expressions_are_unique():
    objects = [SceneObject("red", "circle", "small", 10, 10, 5), SceneObject("red", "circle", "large", 40, 40, 8),
               SceneObject("blue", "square", "large", 20, 50, 8)]
    assert refer(objects[2], objects) == "square"
    assert refer(objects[0], objects) == "small circle"
    assert refer(objects[0], objects, exclude="shape") == "small red object"
    assert refer(objects[2], objects, exclude="shape") == "blue object"


def test_annotations_carry_each_question_family_and_each_image_object_count(shapes_root):
    from tcl.data.shapes import FAMILIES

    annotations = json.loads((shapes_root / "annotations/v2_mscoco_val2014_annotations.json").read_text())
    questions = {q["question_id"]: q["question"] for q in json.loads(
        (shapes_root / "annotations/v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]}
    families = {a["question_family"] for a in annotations["annotations"]}
    assert families == set(FAMILIES)
    for a in annotations["annotations"]:  # the wording agrees with the family the generator wrote
        first = questions[a["question_id"]].split()[:2]
        expected = {"where": "position", "how": "count"}.get(first[0]) or {"color": "color", "shape": "shape"}.get(
            first[1]) or ("relation" if first == ["is", "the"] else "existence")
        assert a["question_family"] == expected
    images = json.loads((shapes_root / "annotations/captions_val2014.json").read_text())
    captions = {}
    for c in images["annotations"]:
        captions.setdefault(c["image_id"], []).append(c["caption"])
    for image in images["images"]:
        assert 1 <= image["num_objects"] <= 4
        assert (image["num_objects"] == 1) == any(c.startswith("a single") for c in captions[image["id"]])


def test_max_objects_bounds_the_scenes_and_keeps_the_default_world(shapes_root, tmp_path):
    explicit = tmp_path / "explicit"
    make_shapes_dataset(explicit, show_progress=False, max_objects=4, **TINY_GENERATOR)
    assert _digest(explicit) == _digest(shapes_root)  # the default is 4: the embedded data stays byte-identical
    single = tmp_path / "single"
    make_shapes_dataset(single, show_progress=False, max_objects=1, **TINY_GENERATOR)
    captions = json.loads((single / "annotations" / "captions_train2014.json").read_text())["annotations"]
    counts = [c["caption"] for c in captions if c["caption"].startswith("exactly")]
    assert counts and set(counts) == {"exactly one shape."}
    annotations = json.loads((single / "annotations" / "v2_mscoco_val2014_annotations.json").read_text())
    assert "is the" not in {a["question_type"] for a in annotations["annotations"]}  # no pair, no relation
    with pytest.raises(ValueError, match="max_objects must be between 1 and 4"):
        make_shapes_dataset(tmp_path / "bad", show_progress=False, max_objects=5, **TINY_GENERATOR)


def test_extra_relation_questions_only_add_true_relation_questions_to_the_training_split(shapes_root, tmp_path):
    extra = tmp_path / "extra"
    make_shapes_dataset(extra, show_progress=False, extra_relation_questions=2, **TINY_GENERATOR)
    base, more = _digest(shapes_root), _digest(extra)
    changed = {name for name in base if base[name] != more[name]}
    assert changed == {"annotations/v2_OpenEnded_mscoco_train2014_questions.json",
                       "annotations/v2_mscoco_train2014_annotations.json", "shapes_summary.json"}
    load = lambda root, name: json.loads((root / "annotations" / name).read_text())  # noqa: E731
    old = load(shapes_root, "v2_mscoco_train2014_annotations.json")["annotations"]
    new = load(extra, "v2_mscoco_train2014_annotations.json")["annotations"]
    questions = {q["question_id"]: q["question"] for q in
                 load(extra, "v2_OpenEnded_mscoco_train2014_questions.json")["questions"]}
    assert all(a in new for a in old)
    added = [a for a in new if a not in old]
    assert added and {a["question_family"] for a in added} == {"relation"}
    objects = json.loads((extra / "annotations" / "instances_train2014.json").read_text())["annotations"]
    per_image = Counter(o["image_id"] for o in objects)
    assert all(per_image[a["image_id"]] >= 2 for a in added)
    assert max(Counter(a["image_id"] for a in added).values()) <= 2
    assert len({questions[a["question_id"]] for a in added}) > len(added) / 2  # varied, not one question repeated
    answers = Counter(a["multiple_choice_answer"] for a in added)
    assert abs(answers["yes"] - answers["no"]) <= 2  # balanced as every family
    summary = json.loads((extra / "shapes_summary.json").read_text())
    assert summary["generator"]["extra_relation_questions"] == 2
    shapes = {c["id"]: c["name"] for c in json.loads((extra / "annotations" / "instances_train2014.json")
                                                       .read_text())["categories"]}
    for a in added:  # each answer agrees with the boxes of the two objects it names
        subject, words, reference = re.match(r"is the (.+) (left of|right of|above|below) the (.+)\?",
                                             questions[a["question_id"]]).groups()
        boxes = [next(o["bbox"] for o in objects if o["image_id"] == a["image_id"]
                      and set(name.replace(" object", "").split()) <= {*o["attributes"], shapes[o["category_id"]]})
                 for name in (subject, reference)]
        (xa, ya), (xb, yb) = ((x + w / 2, y + h / 2) for x, y, w, h in boxes)
        delta = {"left of": xb - xa, "right of": xa - xb, "above": yb - ya, "below": ya - yb}[words]
        assert a["multiple_choice_answer"] == ("yes" if delta > 0 else "no") or abs(delta) < 3  # box vs drawn centre


def test_the_demo_keeps_its_world_and_regenerates_one_made_with_other_settings(shapes_root, tmp_path):
    from tcl.config import ShapesConfig
    from tcl.demo import prepare_world

    world = tmp_path / "world"
    make_shapes_dataset(world, show_progress=False, **TINY_GENERATOR)
    before = _digest(world)
    prepare_world(world, ShapesConfig(**TINY_GENERATOR, extra_relation_questions=0))
    assert _digest(world) == before  # the world its config describes: kept
    prepare_world(world, ShapesConfig(**TINY_GENERATOR, extra_relation_questions=1))
    assert json.loads((world / "shapes_summary.json").read_text())["generator"]["extra_relation_questions"] == 1
    assert _digest(world)["annotations/v2_mscoco_train2014_annotations.json"] != \
        before["annotations/v2_mscoco_train2014_annotations.json"]


def test_make_data_says_when_the_folder_holds_a_world_made_with_other_settings(tmp_path, capsys):
    from tcl.cli import main

    small = ["make-data", "--out", str(tmp_path / "w"), "--train-images", "6", "--val-images", "4", "--quiet"]
    assert main([*small, "--extra-relation-questions", "0"]) == 0
    before = _digest(tmp_path / "w")
    capsys.readouterr()
    assert main([*small, "--extra-relation-questions", "0"]) == 0
    assert "already holds this generated dataset" in capsys.readouterr().out
    assert main([*small, "--extra-relation-questions", "2"]) == 0
    printed = capsys.readouterr().out
    assert "made with other settings" in printed and "'extra_relation_questions': 2" in printed
    assert _digest(tmp_path / "w") == before  # kept until --force
    assert main([*small, "--extra-relation-questions", "2", "--force"]) == 0
    assert _digest(tmp_path / "w") != before
