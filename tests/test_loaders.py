"""Loaders over the generated data: every source, the two views, batching through real DataLoader workers."""

import json

import datasets
import pytest
import torch

from tcl.data.builders import (build_loader, build_pretrain_dataset, build_tokenizer, build_vqa_dataset,
                               pretrain_collator, vqa_collator)
from tcl.data.vqa import answer_weights

from conftest import TINY_GENERATOR

# The tiny configs add the region classification and grounding terms, which need boxes in every batch; these tests
# exercise the TCL terms (or sources without instances files) on their own.
NO_REGIONS = ("loss.region_class_weight=0", "loss.grounding_weight=0")


def _question_count(root, split):
    return len(json.loads((root / f"annotations/v2_OpenEnded_mscoco_{split}_questions.json").read_text())["questions"])


def test_coco_pretrain_pairs_two_views(shapes_root, tiny_config):
    config = tiny_config(shapes_root)
    dataset = build_pretrain_dataset(config)
    assert len(dataset) == 5 * TINY_GENERATOR["train_images"]
    torch.manual_seed(0)
    sample = dataset[0]
    assert sample["image"].shape == sample["image_aug"].shape == (3, 64, 64)
    assert sample["image"].dtype == torch.uint8  # normalised on the device, by the image encoder
    assert not torch.equal(sample["image"], sample["image_aug"])
    assert sample["caption"] and sample["caption"] == sample["caption"].lower() and "." not in sample["caption"]


def _denormalised(view: torch.Tensor) -> torch.Tensor:
    return view.float() / 255


def test_a_sample_key_fixes_its_augmentation_whatever_the_callers_rng(shapes_root, tiny_config):
    dataset = build_pretrain_dataset(tiny_config(shapes_root))
    key = 3 * len(dataset) + 5  # epoch 3, row 5
    torch.manual_seed(1)
    first = dataset[key]
    caller_state = torch.get_rng_state()
    torch.manual_seed(2)
    second = dataset[key]
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["image_aug"], second["image_aug"])
    assert first["caption"] == second["caption"]
    assert not torch.equal(first["image"], dataset[key + len(dataset)]["image"])  # the same row, the next epoch
    # The sample's seeding is undone: the caller's generator continues where it was.
    torch.set_rng_state(caller_state)
    expected = torch.rand(4)
    torch.set_rng_state(caller_state)
    dataset[key]
    assert torch.equal(torch.rand(4), expected)


def test_pretrain_batches_from_workers(shapes_root, tiny_config):
    config = tiny_config(shapes_root, "data.num_workers=2", "train.batch_size=8")
    dataset = build_pretrain_dataset(config)
    tokenizer = build_tokenizer(config)
    loader = build_loader(dataset, pretrain_collator(config, tokenizer), 8, shuffle=True, num_workers=2,
                          drop_last=True)
    batches = list(loader)
    assert len(batches) == len(dataset) // 8
    batch = batches[0]
    assert batch["image"].shape == batch["image_aug"].shape == (8, 3, 64, 64)
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape[0] == 8
    assert batch["input_ids"].shape[1] <= config.model.max_text_len
    assert (batch["input_ids"][:, 0] == tokenizer.cls_id).all()
    assert batch["skipped"] == {}


def test_index_is_memory_mapped_arrow(shapes_root, tiny_config):
    dataset = build_pretrain_dataset(tiny_config(shapes_root))
    assert isinstance(dataset.table, datasets.Dataset)
    assert dataset.table.cache_files and dataset.table.cache_files[0]["filename"].endswith(".arrow")
    # A pickled memory-mapped table travels to workers by file path, not as a copy of its rows.
    import pickle

    assert len(pickle.dumps(dataset.table)) < 10_000


def test_albef_json_pretrain_source(shapes_root, tiny_config, tmp_path):
    captions = json.loads((shapes_root / "annotations/captions_train2014.json").read_text())
    by_image = {}
    for ann in captions["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    entries = [{"image": str(shapes_root / "images/train2014" / f"COCO_train2014_{i:012d}.jpg"), "caption": c}
               for i, c in by_image.items()]
    entries[0]["caption"] = entries[0]["caption"][0]  # a single string is allowed too
    (tmp_path / "coco.json").write_text(json.dumps(entries))
    config = tiny_config(tmp_path, "data.pretrain_source=albef_json", "data.pretrain_files=[coco.json]",
                         *NO_REGIONS)
    dataset = build_pretrain_dataset(config)
    assert len(dataset) == len(by_image)
    assert dataset[1]["image"].shape == (3, 64, 64)


def test_hf_datasets_pretrain_source(shapes_root, tiny_config, tmp_path):
    files = sorted((shapes_root / "images/train2014").glob("*.jpg"))[:4]
    table = datasets.Dataset.from_dict({"img": [str(f) for f in files], "text": ["a shape"] * 4})
    table = table.cast_column("img", datasets.Image())
    table.save_to_disk(str(tmp_path / "pairs"))
    config = tiny_config(tmp_path, "data.pretrain_source=hf", "data.pretrain_files=[pairs]", *NO_REGIONS,
                         "data.hf_image_column=img", "data.hf_caption_column=text")
    dataset = build_pretrain_dataset(config)
    assert len(dataset) == 4
    sample = dataset[2]
    assert sample["image"].shape == (3, 64, 64) and sample["caption"] == "a shape"


def test_official_vqa_train_and_eval(shapes_root, tiny_config):
    config = tiny_config(shapes_root, config="configs/vqa_tiny.yaml")
    train = build_vqa_dataset(config, train=True)
    evaluation = build_vqa_dataset(config, train=False)
    assert len(train) == _question_count(shapes_root, "train2014")
    assert len(evaluation) == _question_count(shapes_root, "val2014")
    sample = evaluation[0]
    assert sample["image"].shape == (3, 64, 64)
    assert sample["question_id"] == 500_001 * 1000
    assert abs(sum(sample["weights"]) - 1.0) < 1e-6 and len(sample["answers"]) == len(sample["weights"])
    tokenizer = build_tokenizer(config)
    loader = build_loader(evaluation, vqa_collator(config, tokenizer, train=False), 5, shuffle=False, num_workers=0)
    batch = next(iter(loader))
    # Evaluation batches hold each image once; image_index gives every question its row.
    assert batch["image"][batch["image_index"]].shape == (5, 3, 64, 64) and batch["question_ids"].dtype == torch.long
    assert len(batch["answers"]) == 5 and not (batch["input_ids"] == tokenizer.sep_id).any()


def test_test_split_without_annotations(shapes_copy, tiny_config):
    (shapes_copy / "annotations/v2_mscoco_val2014_annotations.json").unlink()
    config = tiny_config(shapes_copy, config="configs/vqa_tiny.yaml")
    dataset = build_vqa_dataset(config, train=False)
    assert len(dataset) == _question_count(shapes_copy, "val2014")
    assert dataset[0]["answers"] == [] and dataset[0]["weights"] == []


def test_albef_vqa_lists_with_visual_genome(shapes_root, tiny_config, tmp_path):
    image = "val2014/COCO_val2014_000000500001.jpg"
    vg_image = str(shapes_root / "images" / image)
    entries = [{"question_id": 1, "question": "What color?", "answer": ["red"] * 7 + ["orange"] * 3,
                "image": image, "dataset": "vqa"},
               {"question_id": 2, "question": "Is it round?", "answer": "yes", "image": vg_image, "dataset": "vg"}]
    (tmp_path / "vqa_train.json").write_text(json.dumps(entries))
    config = tiny_config(tmp_path, f"data.image_root={shapes_root / 'images'}", "data.vqa_source=albef_json",
                         "data.vqa_train=[vqa_train.json]", config="configs/vqa_tiny.yaml")
    dataset = build_vqa_dataset(config, train=True)
    first, second = dataset[0], dataset[1]
    assert first["answers"] == ["red", "orange"] and first["weights"] == pytest.approx([0.7, 0.3])
    assert second["answers"] == ["yes"] and second["weights"] == [0.5]


def test_answer_weights_as_tcl():
    assert answer_weights(["2", "2", "two", "2"], "vqa") == (["2", "two"], [0.75, 0.25])
    assert answer_weights(["tree"], "vg") == (["tree"], [0.5])
