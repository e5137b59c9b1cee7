"""The region classification term (loss.region_class_weight): patch tokens pooled inside boxes, the regions of the
generated world in the batch, the configuration's checks and the term in the pretraining model."""

import json
from pathlib import Path

import pytest
import torch

from tcl.config import load_config
from tcl.data.builders import build_pretrain_dataset, build_tokenizer, pretrain_collator
from tcl.data.coco import BoxedObject, coco_objects
from tcl.data.regions import collate_regions, region_labels
from tcl.data.image_text import ImageTextDataset
from tcl.data.shapes import SHAPES, SIZES as SIZE_FRACTIONS
from tcl.errors import ConfigError, DataError
from tcl.models import TCLPretrainModel
from tcl.models.pooling import pool_boxes

REPO = Path(__file__).resolve().parents[1]
SIZES = list(SIZE_FRACTIONS)
# The terms that read boxes, off.
NO_REGIONS = ("loss.region_class_weight=0", "loss.grounding_weight=0")
CATEGORIES = f"loss.region_categories=[{', '.join(SHAPES)}]"
REGIONS = ["loss.region_class_weight=1.0", CATEGORIES, "data.pretrain_instances=[annotations/instances_train2014.json]"]


def _grid_tokens(side: int = 4, dim: int = 2) -> torch.Tensor:
    """[1, 1 + side², dim] tokens whose patch k holds (k, -k); the [CLS] token holds 1000, which no pool may read."""
    patches = torch.arange(side * side, dtype=torch.float32)
    return torch.cat([torch.full((1, dim), 1000.0), torch.stack([patches, -patches], dim=1)])[None]


def test_pool_boxes_averages_the_patches_whose_centres_the_box_covers():
    tokens = _grid_tokens()  # 4 x 4 patches, centres at 0.125, 0.375, 0.625, 0.875
    boxes = torch.tensor([[[0.25, 0.25, 0.5, 0.5],  # the top-left 2 x 2 patches: 0, 1, 4, 5
                           [0.5, 0.875, 1.0, 0.2],  # the bottom row: 12 ... 15
                           [0.875, 0.5, 0.2, 0.45],  # column 3, rows 1 and 2: 7, 11
                           [0.7, 0.1, 0.05, 0.05]]])  # no centre inside: the patch under (0.7, 0.1), 2
    pooled = pool_boxes(tokens, boxes)
    assert pooled.shape == (1, 4, 2)
    assert pooled[0, :, 0].tolist() == pytest.approx([2.5, 13.5, 9.0, 2.0])
    assert pooled[0, :, 1].tolist() == pytest.approx([-2.5, -13.5, -9.0, -2.0])


def test_pool_boxes_needs_a_square_grid():
    with pytest.raises(ValueError, match="square patch grid"):
        pool_boxes(torch.zeros(1, 1 + 12, 2), torch.zeros(1, 1, 4))


def test_collated_regions_pad_with_ignored_labels():
    batch = collate_regions([[((0.5, 0.5, 0.2, 0.2), (3, 1))], [],
                             [((0.1, 0.2, 0.3, 0.4), (0, -100)), ((0.6, 0.6, 0.1, 0.1), (2, 0))]])
    assert batch["labels"].tolist() == [[[3, 1], [-100, -100]], [[-100, -100], [-100, -100]], [[0, -100], [2, 0]]]
    assert batch["boxes"][2, 0].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert batch["boxes"].shape == (3, 2, 4)


def test_region_labels_name_the_category_and_each_attribute_class():
    obj = BoxedObject("triangle", ("small", "red"), (1.0, 2.0, 3.0, 4.0))
    classes = [list(SHAPES), ["red", "green"], ["small", "large"], ["striped", "plain"]]
    assert region_labels(obj, classes) == (SHAPES.index("triangle"), 0, 0, -100)
    assert region_labels(obj, classes[:1]) == (SHAPES.index("triangle"),)


def test_region_classification_needs_boxes_categories_and_a_geometry_the_boxes_follow():
    config = REPO / "configs/pretrain_tiny.yaml"
    with pytest.raises(ConfigError, match="loss.region_class_weight > 0 needs boxes.*loss.region_class_weight=0"):
        load_config(config, [*REGIONS, "data.pretrain_instances=[]", "loss.grounding_weight=0"])
    with pytest.raises(ConfigError, match="loss.region_class_weight and loss.grounding_weight > 0 need boxes.*turn "
                                          "them off with loss.region_class_weight=0 loss.grounding_weight=0"):
        load_config(config, [*REGIONS, "data.pretrain_instances=[]"])
    with pytest.raises(ConfigError, match="needs loss.region_categories"):
        load_config(config, [*REGIONS, "loss.region_categories=[]"])
    with pytest.raises(ConfigError, match="data.hflip = false"):
        load_config(config, [*REGIONS, "data.hflip=true"])
    with pytest.raises(ConfigError, match="must not be negative"):
        load_config(config, ["loss.region_class_weight=-1"])
    with pytest.raises(ConfigError, match="at least 2 bands"):
        load_config(config, [*REGIONS, "loss.region_position_bins=1"])


def test_the_generated_worlds_regions_reach_the_batch(shapes_root, tiny_config):
    config = tiny_config(shapes_root, *REGIONS, "loss.grounding_weight=0")
    dataset = build_pretrain_dataset(config)
    plain = build_pretrain_dataset(tiny_config(shapes_root, *NO_REGIONS))
    sample = dataset[5]
    assert torch.equal(sample["image"], plain[5]["image"])  # the regions draw no random numbers
    assert "ground_boxes" not in sample  # the grounding term is off
    assert 1 <= len(sample["regions"]) <= 4
    for box, (shape, colour, size) in sample["regions"]:  # the tiny config's classes: shapes, colours, sizes
        assert 0 <= shape < len(SHAPES) and 0 <= colour < 7 and 0 <= size < 2
        assert all(0.0 <= v <= 1.0 for v in box)
    batch = pretrain_collator(config, build_tokenizer(config))([dataset[k] for k in range(4)])
    assert batch["regions"]["boxes"].shape[:2] == batch["regions"]["labels"].shape[:2]
    assert batch["regions"]["labels"].shape[2] == 3
    assert "regions" not in pretrain_collator(config, build_tokenizer(config))([plain[k] for k in range(4)])


def test_without_a_crop_the_regions_are_the_instances_files_objects(shapes_root, tiny_config):
    config = tiny_config(shapes_root, *REGIONS, "data.crop_scale_min=1.0",
                         f"loss.region_attributes=[[{', '.join(SIZES)}]]")
    dataset = build_pretrain_dataset(config)
    objects = coco_objects([shapes_root / "annotations/instances_train2014.json"])
    for index in (0, 7):
        found = objects[str(dataset.table[index][dataset.image_column])]
        side = 64.0
        expected = [((o.box[0] + o.box[2] / 2) / side, (o.box[1] + o.box[3] / 2) / side, o.box[2] / side,
                     o.box[3] / side, SHAPES.index(o.category), SIZES.index(o.attributes[0])) for o in found]
        got = [(*box, *labels) for box, labels in dataset[index]["regions"]]
        assert got == [pytest.approx(row) for row in expected]


def test_the_dataset_composes_any_objects_part_after_its_views(shapes_root, tiny_config):
    """An auxiliary objective's data need is a part of its own: any callable of (objects, crop) adds its fields, and
    the views and the other parts' fields stay what they were."""
    dataset = build_pretrain_dataset(tiny_config(shapes_root, *REGIONS, "loss.grounding_weight=0"))

    def count(objects, crop):
        return {"count": len(objects), "crop": crop}

    counting = ImageTextDataset(dataset.table, dataset.image_root, dataset.transform, dataset.reading,
                                dataset.aug_transform, objects=dataset.objects,
                                object_targets=[*dataset.object_targets, count])
    sample, plain = counting[3], dataset[3]
    assert torch.equal(sample["image"], plain["image"]) and torch.equal(sample["image_aug"], plain["image_aug"])
    assert sample["regions"] == plain["regions"]
    assert sample["count"] == len(dataset.objects[str(dataset.table[3]["image"])]) >= 1
    assert len(sample["crop"]) == 4
    with pytest.raises(ValueError, match="need the images' objects"):
        ImageTextDataset(dataset.table, dataset.image_root, dataset.transform, object_targets=[count])


def test_every_category_of_the_instances_files_must_be_listed(shapes_root, tiny_config):
    config = tiny_config(shapes_root, *REGIONS[:1], REGIONS[2], "loss.region_categories=[circle, square]")
    with pytest.raises(DataError, match=r"categories \['cross', 'triangle'\] are not in loss.region_categories"):
        build_pretrain_dataset(config)


def _model(weight: float) -> TCLPretrainModel:
    config = load_config(REPO / "configs/pretrain_tiny.yaml",
                         ["model.queue_size=32", *REGIONS, f"loss.region_class_weight={weight}",
                          "loss.region_attributes=[[red, green, blue], [small, large]]", "loss.grounding_weight=0",
                          "loss.region_position_bins=0"])  # the region term alone, words only
    torch.manual_seed(0)
    return TCLPretrainModel(config.model, config.loss, 60)


def _inputs(size: int = 8):
    g = torch.Generator().manual_seed(3)
    image = torch.randn(size, 3, 64, 64, generator=g)
    ids = torch.randint(5, 60, (size, 8), generator=g)
    ids[:, 0] = 2
    labels = torch.stack([torch.randint(0, n, (size, 2), generator=g) for n in (len(SHAPES), 3, 2)], dim=-1)
    labels[1, 1] = -100  # a padded object
    labels[3, 0, 1] = -100  # an object without a colour
    regions = {"boxes": torch.rand(size, 2, 4, generator=g) * 0.4 + 0.2, "labels": labels}
    return (image, image.clone(), ids, torch.ones_like(ids)), regions


def test_the_region_term_trains_the_head_and_the_image_tower_only():
    model = _model(1.0)
    inputs, regions = _inputs()
    out = model(*inputs, regions=regions)
    assert torch.isfinite(out.losses["regions"]) and out.losses["regions"] > 0
    assert 0.0 <= out.diagnostics["region_accuracy"] <= 1.0
    assert 0.0 <= out.diagnostics["region_attribute_accuracy"] <= 1.0
    without = model._total({k: v for k, v in out.losses.items() if k != "regions"})
    assert out.loss.item() == pytest.approx(without.item() + out.losses["regions"].item(), rel=1e-5)
    with pytest.raises(ValueError, match="needs the batch's 'regions'"):
        model(*inputs)
    model.zero_grad()
    loss, _ = model.region_head.loss(model.encode_image(inputs[0])[0], regions)
    loss.backward()
    touched = {name.split(".")[0] for name, p in model.named_parameters()
               if p.grad is not None and p.grad.abs().sum() > 0}
    assert touched == {"region_head", "vision_encoder"}
    # One cross-entropy per class of words, each over the objects labelled in it (the padded object and the one
    # without a colour are ignored there, whatever their boxes), summed.
    logits = model.region_head.classify(model.encode_image(inputs[0])[0], regions["boxes"])
    assert [part.shape[-1] for part in logits] == [len(SHAPES), 3, 2]
    expected = 0.0
    for k, part in enumerate(logits):
        labels = regions["labels"][..., k]
        expected += torch.nn.functional.cross_entropy(part[labels >= 0], labels[labels >= 0]).item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_a_batch_without_objects_gives_a_zero_term_that_keeps_the_graph():
    model = _model(1.0)
    inputs, regions = _inputs()
    embeds = model.encode_image(inputs[0])[0]
    loss, diagnostics = model.region_head.loss(embeds, {"boxes": regions["boxes"],
                                                         "labels": torch.full((8, 2, 3), -100)})
    assert loss.item() == 0.0 and loss.requires_grad
    assert {name: value.item() for name, value in diagnostics.items()} == {"region_accuracy": 0.0,
                                                                           "region_attribute_accuracy": 0.0}


def test_without_the_term_the_model_keeps_tcls_state_keys():
    assert not any(key.startswith("region_head") for key in _model(0.0).state_dict())
    # The keys of the nn.Linear the head was before it became a part of its own: runs saved before load unchanged.
    assert sorted(key for key in _model(0.5).state_dict() if key.startswith("region_head")) == [
        "region_head.bias", "region_head.weight"]


def test_region_set_of_the_generated_world_and_the_heads_accuracy(shapes_root):
    from tcl.evaluation.coco_sets import coco_region_set
    from tcl.evaluation.regions import evaluate_regions

    path = shapes_root / "annotations/instances_val2014.json"
    data = coco_region_set(path, shapes_root / "images", 64, [list(SHAPES), ["red", "green", "blue"], SIZES], 6)
    annotations = [a for a in json.loads(path.read_text())["annotations"] if a["image_id"] in data.image_ids]
    assert len(data.images) == 6 and (data.labels[..., 0] >= 0).sum() == len(annotations)
    first = [a for a in annotations if a["image_id"] == data.image_ids[0]][0]
    x, y, w, h = first["bbox"]
    assert data.boxes[0, 0].tolist() == pytest.approx([(x + w / 2) / 64, (y + h / 2) / 64, w / 64, h / 64])
    # A head fixed to answer "triangle", "blue" and "large" is right exactly as often as those labels occur.
    model = _model(1.0)
    with torch.no_grad():
        model.region_head.weight.zero_()
        model.region_head.bias.copy_(torch.tensor([0, 0, 1.0, 0, 0, 0, 1.0, 0, 1.0]))
    results = evaluate_regions(model, data, batch_size=4)
    labels = data.labels.reshape(-1, 3)
    real = labels[:, 0] >= 0
    assert results["region_objects"] == int(real.sum())
    triangles = (labels[real, 0] == SHAPES.index("triangle")).float().mean().item()
    assert results["region_category_accuracy"] == pytest.approx(100 * triangles, abs=1e-4)
    attributes = labels[real, 1:]
    right = ((attributes[:, 0] == 2).sum() + (attributes[:, 1] == 1).sum()).item()
    assert results["region_attribute_accuracy"] == pytest.approx(100 * right / (attributes >= 0).sum().item(),
                                                                 abs=1e-4)


def test_a_missing_instances_file_says_what_to_do(shapes_copy, tiny_config):
    (shapes_copy / "annotations/instances_train2014.json").unlink()
    with pytest.raises(DataError, match=r"instances_train2014.json: instances file not found.*"
                                        r"loss.region_class_weight=0 loss.grounding_weight=0"):
        build_pretrain_dataset(tiny_config(shapes_copy))


def test_position_bands_are_named_from_the_boxes_in_the_view():
    config = load_config(REPO / "configs/pretrain_tiny.yaml",
                         ["model.queue_size=32", *REGIONS, "loss.grounding_weight=0", "loss.region_position_bins=4",
                          "loss.region_attributes=[[red, green, blue], [small, large]]"])
    torch.manual_seed(0)
    model = TCLPretrainModel(config.model, config.loss, 60)
    inputs, regions = _inputs()
    # Column and row bands of each box centre (x, y in fractions of the view); padded objects stay ignored.
    targets = model.region_head.targets(regions["boxes"], regions["labels"])
    real = regions["labels"][..., 0] >= 0
    assert torch.equal(targets[..., :3], regions["labels"])
    assert torch.equal(targets[..., 3][real], (regions["boxes"][..., 0][real] * 4).long())
    assert torch.equal(targets[..., 4][real], (regions["boxes"][..., 1][real] * 4).long())
    assert (targets[..., 3:][~real] == -100).all()
    assert model.region_head.targets(torch.tensor([[[1.0, 0.0, 0.1, 0.1]]]), torch.zeros(1, 1, 3, dtype=torch.long)
                                )[0, 0, 3:].tolist() == [3, 0]  # the right edge is the last band
    logits = model.region_head.classify(model.encode_image(inputs[0])[0], regions["boxes"])
    assert [part.shape[-1] for part in logits] == [len(SHAPES), 3, 2, 4, 4]
    out = model(*inputs, regions=regions)
    assert 0.0 <= out.diagnostics["region_position_accuracy"] <= 1.0
    loss, _ = model.region_head.loss(model.encode_image(inputs[0])[0], regions)
    expected = sum(torch.nn.functional.cross_entropy(part[targets[..., k] >= 0], targets[..., k][targets[..., k] >= 0])
                   for k, part in enumerate(logits))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
