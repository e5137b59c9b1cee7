"""The grounding term (loss.grounding_weight): boxes of the generated world, boxes through the crop, the box loss, the
phrases read from COCO instances files, and the term in the pretraining model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tcl.config import load_config
from tcl.data.builders import build_pretrain_dataset, build_tokenizer, pretrain_collator
from tcl.data.coco import coco_objects, referring_phrases
from tcl.data.shapes import SHAPES, SceneObject, render_scene
from tcl.data.transforms import RandomResizedCrop, ViewWithCrop, box_in_crop, pretrain_transform
from tcl.errors import ConfigError, DataError
from tcl.losses.grounding import box_loss
from tcl.models import TCLPretrainModel

REPO = Path(__file__).resolve().parents[1]
GROUNDING = ["loss.grounding_weight=1.0", "data.pretrain_instances=[annotations/instances_train2014.json]",
             "loss.grounding_objects=1"]


@pytest.mark.parametrize("shape", SHAPES)
def test_a_generated_objects_box_is_tight_around_its_pixels(shape):
    obj = SceneObject("red", shape, "large", 30.3, 25.7, 0.17 * 64)
    pixels = np.asarray(render_scene([obj], 64, np.random.default_rng(0))).astype(int)
    drawn = np.abs(pixels - pixels[0, 0]).max(axis=2) > 40
    rows, columns = np.nonzero(drawn)
    x, y, width, height = obj.box()
    # Every drawn pixel lies in the box, and the box reaches the drawn extent on each side (to a pixel's
    # anti-aliasing).
    assert columns.min() >= np.floor(x) - 1 and columns.max() <= np.ceil(x + width)
    assert rows.min() >= np.floor(y) - 1 and rows.max() <= np.ceil(y + height)
    assert abs(columns.min() - x) <= 1.5 and abs(columns.max() + 1 - (x + width)) <= 1.5
    assert abs(rows.min() - y) <= 1.5 and abs(rows.max() + 1 - (y + height)) <= 1.5


def test_box_in_crop_inside_clipped_and_outside():
    crop = (10, 20, 40, 30)  # top, left, height, width
    assert box_in_crop([26, 14, 6, 8], crop) == pytest.approx((9 / 30, 8 / 40, 6 / 30, 8 / 40))
    # Cut by the crop's left and top edges: only the part inside remains.
    assert box_in_crop([14, 6, 10, 10], crop) == pytest.approx((2 / 30, 3 / 40, 4 / 30, 6 / 40))
    assert box_in_crop([0, 0, 10, 10], crop) is None
    assert box_in_crop([20, 10, 30, 40], crop) == pytest.approx((0.5, 0.5, 1.0, 1.0))


def test_view_with_crop_gives_the_chains_own_view_and_the_crop_it_used():
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    chain = pretrain_transform(64, (0.5, 1.0), hflip=False, color_jitter=False, randaugment=False)
    torch.manual_seed(7)
    expected = chain(image)
    torch.manual_seed(7)
    view, crop = ViewWithCrop(chain)(image)
    assert torch.equal(view, expected)
    torch.manual_seed(7)
    assert crop == RandomResizedCrop(64, (0.5, 1.0)).draw(image)


@pytest.mark.parametrize("option", [dict(hflip=True, randaugment=False), dict(hflip=False, randaugment=True)])
def test_view_with_crop_refuses_steps_that_move_objects(option):
    with pytest.raises(ValueError, match="boxes cannot follow"):
        ViewWithCrop(pretrain_transform(64, (0.5, 1.0), color_jitter=False, **option))


def test_box_loss_on_hand_made_boxes():
    box = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]])
    both = torch.tensor([True, True])
    assert box_loss(box, box, both).item() == pytest.approx(0.0, abs=1e-5)
    # Moved right by 0.2 (L1 0.2). The first box then touches its target: IoU 0 and an enclosing box equal to the
    # union, GIoU 0. The second leaves a gap of 0.1: enclosing area 0.03 against a union of 0.02, GIoU -1/3.
    moved = box + torch.tensor([0.2, 0.0, 0.0, 0.0])
    assert box_loss(moved, box, both).item() == pytest.approx(((0.2 + 1) + (0.2 + 1 + 1 / 3)) / 2, abs=1e-5)
    # Invalid rows do not count, whatever they hold.
    wild = torch.cat([moved[:1], torch.tensor([[0.9, 0.9, 0.5, 0.5]])])
    assert box_loss(wild, box, torch.tensor([True, False])).item() == pytest.approx(1.2, abs=1e-5)
    none = box.clone().requires_grad_()
    loss = box_loss(none, box, torch.tensor([False, False]))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(none.grad, torch.zeros_like(box))


def coco_object_phrases(files) -> dict:
    """Each image's objects that their full phrase names alone, as (phrase, box)."""
    return {key: [(found[0], list(objects[k].box)) for k in range(len(objects))
                  if (found := referring_phrases(objects, k))] for key, objects in coco_objects(files).items()}


def _instances(path: Path, annotations: list[dict], categories: bool = True) -> Path:
    images = [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 64, "height": 64}]
    payload = {"images": images, "annotations": annotations}
    if categories:
        payload["categories"] = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]
    path.write_text(json.dumps(payload))
    return path


def test_object_phrases_leave_out_phrases_that_name_several_objects(tmp_path):
    def ann(k, category, attributes, box):
        return {"id": k, "image_id": 1, "category_id": category, "bbox": box, "iscrowd": 0, "attributes": attributes}

    path = _instances(tmp_path / "instances_train2014.json", [
        ann(1, 1, ["small", "red"], [1, 2, 3, 4]), ann(2, 1, ["small", "red"], [20, 20, 3, 4]),
        ann(3, 2, ["large", "blue"], [30, 5, 10, 10]), ann(4, 2, [], [40, 40, 5, 5])])
    phrases = coco_object_phrases([path])
    # The two small red circles share their phrase; "square" names both squares; "large blue square" one.
    assert phrases == {"train2014/COCO_train2014_000000000001.jpg": [("large blue square", [30.0, 5.0, 10.0, 10.0])]}


def test_varied_phrases_are_the_sub_phrases_that_still_name_the_object_alone():
    from tcl.data.coco import BoxedObject

    box = (0, 0, 1, 1)
    objects = [BoxedObject("circle", ("small", "red"), box), BoxedObject("circle", ("large", "red"), box),
               BoxedObject("square", ("small", "blue"), box)]
    assert referring_phrases(objects, 0) == ["small red circle"]
    assert referring_phrases(objects, 0, varied=True) == ["small circle", "small red circle"]
    assert referring_phrases(objects, 2, varied=True) == ["square", "blue square", "small square", "small blue square"]
    twins = [BoxedObject("circle", ("red",), box)] * 2
    assert referring_phrases(twins, 0, varied=True) == []


def test_object_phrases_need_an_instances_file(tmp_path):
    path = _instances(tmp_path / "instances_train2014.json", [], categories=False)
    with pytest.raises(DataError, match="not a COCO instances file"):
        coco_object_phrases([path])


def test_grounding_needs_boxes_and_a_geometry_the_boxes_follow():
    with pytest.raises(ConfigError, match="loss.grounding_weight > 0 needs boxes"):
        load_config(REPO / "configs/pretrain_tiny.yaml", ["loss.grounding_weight=1", "data.pretrain_instances=[]",
                                                          "loss.region_class_weight=0"])
    with pytest.raises(ConfigError, match="data.hflip = false"):
        load_config(REPO / "configs/pretrain_tiny.yaml", [*GROUNDING, "data.hflip=true"])
    with pytest.raises(ConfigError, match="must not be negative"):
        load_config(REPO / "configs/pretrain_tiny.yaml", ["loss.grounding_weight=-1"])


def test_the_generated_worlds_phrases_and_boxes_reach_the_batch(shapes_root, tiny_config):
    config = tiny_config(shapes_root, *GROUNDING)
    dataset = build_pretrain_dataset(config)
    plain = build_pretrain_dataset(tiny_config(shapes_root, "loss.grounding_weight=0"))
    sample = dataset[5]
    assert torch.equal(sample["image"], plain[5]["image"])  # the object's draw comes after the views'
    words = sample["ground_phrase"].split()
    assert words[-1] in SHAPES and len(words) == 3
    (box,) = sample["ground_boxes"]
    assert box is not None and all(0.0 <= v <= 1.0 for v in box)
    batch = pretrain_collator(config, build_tokenizer(config))([dataset[k] for k in range(4)])
    grounding = batch["grounding"]
    assert grounding["input_ids"].shape[0] == 4 and grounding["boxes"].shape == (4, 1, 4)
    assert grounding["valid"].dtype == torch.bool
    assert "grounding" not in pretrain_collator(config, build_tokenizer(config))([plain[k] for k in range(4)])


def _model(weight: float, vocab: int = 60) -> TCLPretrainModel:
    config = load_config(REPO / "configs/pretrain_tiny.yaml",
                         ["model.queue_size=32", *GROUNDING, f"loss.grounding_weight={weight}",
                          "loss.region_class_weight=0"])  # the grounding term alone
    torch.manual_seed(0)
    return TCLPretrainModel(config.model, config.loss, vocab)


def _inputs(size: int = 8):
    g = torch.Generator().manual_seed(3)
    image = torch.randn(size, 3, 64, 64, generator=g)
    ids = torch.randint(5, 60, (size, 8), generator=g)
    ids[:, 0] = 2
    phrases = torch.randint(5, 60, (size, 4), generator=g)
    phrases[:, 0] = 2
    grounding = {"input_ids": phrases, "attention_mask": torch.ones_like(phrases),
                 "boxes": torch.rand(size, 1, 4, generator=g) * 0.5 + 0.1, "valid": (torch.arange(size) != 2)[:, None]}
    return (image, image.clone(), ids, torch.ones_like(ids)), grounding


def test_the_grounding_term_trains_the_head_and_the_fusion_encoder():
    model = _model(1.0)
    inputs, grounding = _inputs()
    out = model(*inputs, grounding=grounding)
    assert torch.isfinite(out.losses["grounding"]) and out.losses["grounding"] > 0
    without = model._total({k: v for k, v in out.losses.items() if k != "grounding"})
    assert out.loss.item() == pytest.approx(without.item() + out.losses["grounding"].item(), rel=1e-5)
    with pytest.raises(ValueError, match="needs the batch's 'grounding'"):
        model(*inputs)
    # The term alone reaches the head, the fusion encoder, the phrase's text encoder and the image tokens' position
    # embeddings (where things are).
    model.zero_grad()
    model._grounding(model.encode_image(inputs[0])[0], grounding).backward()
    for module in ("grounding_head", "fusion_encoder", "text_encoder", "vision_encoder"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(module + ".") and p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0, module
    assert model.vision_encoder.pos_embed.grad.abs().sum() > 0


def test_without_the_term_the_model_keeps_tcls_state_keys():
    assert not any(key.startswith("grounding_head") for key in _model(0.0).state_dict())
    # The head's keys are those of the nn.Sequential it was before it became a part of its own: runs saved before
    # load unchanged.
    assert sorted(key for key in _model(0.5).state_dict() if key.startswith("grounding_head")) == [
        f"grounding_head.{layer}.{kind}" for layer in (0, 1, 3) for kind in ("bias", "weight")]


def test_paired_iou_on_hand_made_boxes():
    from tcl.evaluation.grounding import paired_iou

    target = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]])
    predicted = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.55, 0.5, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]])
    # Identical; shifted by a quarter of the width (overlap 0.15 x 0.2 of a union 0.05); disjoint.
    assert paired_iou(predicted, target).tolist() == pytest.approx([1.0, 0.03 / 0.05, 0.0], abs=1e-6)


def test_grounding_set_of_the_generated_world_and_its_accuracy(shapes_root, tiny_config):
    from tcl.evaluation.coco_sets import coco_grounding_set
    from tcl.evaluation.grounding import evaluate_grounding

    config = tiny_config(shapes_root, *GROUNDING)
    tokenizer = build_tokenizer(config)
    data = coco_grounding_set(shapes_root / "annotations/instances_val2014.json", shapes_root / "images",
                              tokenizer, 64, max_images=5)
    assert len(data.images) == 5 and data.image_index.max() == 4
    objects = json.loads((shapes_root / "annotations/instances_val2014.json").read_text())["annotations"]
    first = [a for a in objects if a["image_id"] == 500_001]
    x, y, w, h = first[0]["bbox"]
    assert data.boxes[0].tolist() == pytest.approx([(x + w / 2) / 64, (y + h / 2) / 64, w / 64, h / 64])
    assert data.phrases[0] == " ".join([*first[0]["attributes"], SHAPES[first[0]["category_id"] - 1]])
    # A head that always answers the first phrase's box finds exactly the phrases whose box overlaps it enough.
    model = _model(1.0, len(tokenizer))
    last = model.grounding_head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.logit(data.boxes[0].clamp(1e-4, 1 - 1e-4)))
    from tcl.evaluation.grounding import paired_iou

    expected = (paired_iou(data.boxes[:1].expand_as(data.boxes), data.boxes) >= 0.5).float().mean().item()
    results = evaluate_grounding(model, data)
    assert results["grounding_phrases"] == len(data.phrases)
    assert results["grounding_iou50"] == pytest.approx(100 * expected, abs=1e-4) and 0 < expected < 1


def test_a_folder_generated_before_the_instances_files_counts_as_incomplete(shapes_copy):
    from tcl.make_data import dataset_exists

    assert dataset_exists(shapes_copy)
    (shapes_copy / "annotations/instances_val2014.json").unlink()
    assert not dataset_exists(shapes_copy)  # so tcl make-data and tcl demo write it again


def test_a_phrase_of_two_objects_names_both_and_the_head_places_each_in_order(shapes_root, tiny_config):
    config = tiny_config(shapes_root, *GROUNDING, "loss.grounding_objects=2")
    dataset = build_pretrain_dataset(config)
    single = build_pretrain_dataset(tiny_config(shapes_root, *GROUNDING))
    seen_pairs = 0
    for k in range(12):
        sample = dataset[k]
        assert torch.equal(sample["image"], single[k]["image"])  # the views do not change
        first, second = sample["ground_boxes"]
        parts = sample["ground_phrase"].split(" and ")
        assert first is not None and len(parts) == 1 + (second is not None)
        assert all(part.split()[-1] in SHAPES for part in parts)
        seen_pairs += second is not None
    assert seen_pairs > 0  # images of one object give one box
    batch = pretrain_collator(config, build_tokenizer(config))([dataset[k] for k in range(4)])
    assert batch["grounding"]["boxes"].shape == (4, 2, 4) and batch["grounding"]["valid"].shape == (4, 2)
    # The head gives one box per named object; the loss counts the boxes that exist.
    model = TCLPretrainModel(config.model, config.loss, len(build_tokenizer(config))).eval()  # no dropout
    embeds = model.encode_image(batch["image"])[0]
    grounding = batch["grounding"]
    predicted = model.predict_boxes(embeds, grounding["input_ids"], grounding["attention_mask"])
    assert predicted.shape == (4, 2, 4)
    valid = grounding["valid"]
    expected = box_loss(predicted[valid], grounding["boxes"][valid], torch.ones(int(valid.sum()), dtype=torch.bool))
    assert model._grounding(embeds, grounding).item() == pytest.approx(expected.item(), rel=1e-5)
