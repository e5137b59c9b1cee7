"""Questions about the same image share one image-encoder pass: grouped sampling, shared augmentation, the collator's
image index, and the model giving the same answers either way."""

import json
from pathlib import Path

import pytest
import torch

from tcl.config import load_config
from tcl.data.builders import build_loader, build_tokenizer, build_vqa_dataset, vqa_collator
from tcl.data.sampling import ShardedEpochSampler
from tcl.data.vqa import VQACollator
from tcl.engine.commands import finetune_vqa
from tcl.models.vqa import TCLVQAModel

REPO = Path(__file__).resolve().parents[1]


def test_grouped_sampler_keeps_each_group_together_and_covers_every_index_once():
    groups = [[0, 1, 2], [3], [4, 5], [6, 7, 8, 9], [10, 11]]
    sampler = ShardedEpochSampler(12, batch_size=4, seed=3, groups=groups, drop_last=False)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = [key - epoch * 12 for key in sampler]
        assert sorted(order) == list(range(12))
        for group in groups:  # members are adjacent, in any order
            positions = sorted(order.index(i) for i in group)
            assert positions == list(range(positions[0], positions[0] + len(group)))
        orders.append(order)
    assert orders[0] != orders[1] != orders[2]
    with pytest.raises(ValueError, match="partition"):
        ShardedEpochSampler(12, batch_size=4, groups=[[0, 1], [1, 2]])


def test_evaluation_batches_encode_each_image_once(shapes_root, tiny_config):
    config = tiny_config(shapes_root, config="configs/vqa_tiny.yaml")
    dataset, tokenizer = build_vqa_dataset(config, train=False), build_tokenizer(config)
    samples = [dataset[i] for i in range(16)]
    shared = vqa_collator(config, tokenizer, train=False)(samples)
    separate = VQACollator(tokenizer, None)(samples)
    keys = [s["image_key"] for s in samples]
    assert shared["image"].shape[0] == len(set(keys)) < len(samples)
    assert torch.equal(shared["image"][shared["image_index"]], separate["image"])
    assert torch.equal(separate["image_index"], torch.arange(16))


def test_grouped_training_augments_each_image_once_per_epoch(shapes_root, tiny_config):
    grouped = tiny_config(shapes_root, "vqa.group_by_image=true", "data.randaugment=true",
                          config="configs/vqa_tiny.yaml")
    dataset = build_vqa_dataset(grouped, train=True)
    first_image = dataset.image_groups()[0]
    assert len(first_image) > 1
    a, b = first_image[:2]
    n = len(dataset)
    assert torch.equal(dataset[a]["image"], dataset[b]["image"])  # same image, same epoch: one augmentation
    assert not torch.equal(dataset[a]["image"], dataset[n + a]["image"])  # next epoch: another one
    independent = build_vqa_dataset(tiny_config(shapes_root, "vqa.group_by_image=false", "data.randaugment=true",
                                                config="configs/vqa_tiny.yaml"), train=True)
    assert not torch.equal(independent[a]["image"], independent[b]["image"])
    loader = build_loader(dataset, vqa_collator(grouped, build_tokenizer(grouped), train=True), 16, shuffle=True,
                          num_workers=0, groups=dataset.image_groups())
    batch = next(iter(loader))
    assert batch["image"].shape[0] < 16 and batch["image_index"].max() == batch["image"].shape[0] - 1


class CountingTransform:
    """The dataset's own transform, counting the images it is given."""

    def __init__(self, transform):
        self.transform, self.calls = transform, 0

    def __call__(self, image):
        self.calls += 1
        return self.transform(image)


class CountingTable:
    """The dataset's table, counting the rows read from it."""

    def __init__(self, table):
        self.table, self.reads = table, 0

    def __len__(self):
        return len(self.table)

    def __getitem__(self, index):
        self.reads += 1
        return self.table[index]


def test_grouped_training_decodes_each_image_once_per_batch_and_gives_the_same_tensors(shapes_root, tiny_config):
    config = tiny_config(shapes_root, "vqa.group_by_image=true", "data.randaugment=true",
                         config="configs/vqa_tiny.yaml")
    dataset = build_vqa_dataset(config, train=True)
    counting = dataset.transform = CountingTransform(dataset.transform)
    groups = dataset.image_groups()[:4]
    keys = [len(dataset) + i for group in groups for i in group]  # the second epoch's keys, image after image
    table = dataset.table = CountingTable(dataset.table)
    images = [dataset[key]["image"] for key in keys]
    assert counting.calls == len(groups) < len(keys)
    assert table.reads == len(keys)  # one row read per question (the augmentation key's read is used again)
    dataset.table = table.table
    for key, image in zip(keys, images):  # a fresh dataset per question (nothing remembered): the same tensors
        alone = build_vqa_dataset(config, train=True)
        assert torch.equal(alone[key]["image"], image)
    # The same image in another epoch is another draw, made anew.
    assert not torch.equal(dataset[groups[0][0]]["image"], images[0])
    assert counting.calls == len(groups) + 1


@pytest.mark.parametrize("head", ["classifier", "decoder"])
def test_shared_images_give_the_same_scores_and_loss(head):
    torch.manual_seed(0)
    model = TCLVQAModel(load_config(REPO / "configs/vqa_tiny.yaml").model, 60, 7, head=head).eval()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    index = torch.tensor([0, 0, 1, 0, 1])
    ids = torch.randint(5, 60, (5, 8), generator=generator)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    candidates = None
    if head == "decoder":
        candidates = (torch.randint(5, 60, (7, 3), generator=generator), torch.ones(7, 3, dtype=torch.long))
    shared = model.answer_scores(images, ids, mask, candidates, k=4, image_index=index)
    expanded = model.answer_scores(images[index], ids, mask, candidates, k=4)
    assert shared.shape == (5, 7)
    assert torch.allclose(shared, expanded, atol=1e-5)
    if head == "classifier":
        targets = torch.rand(5, 7)
        assert torch.allclose(model(images, ids, mask, targets=targets, image_index=index).loss,
                              model(images[index], ids, mask, targets=targets).loss, atol=1e-6)


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_finetune_with_questions_grouped_by_image(shapes_root, tmp_path):
    out = tmp_path / "vqa"
    assert finetune_vqa(["--config", str(REPO / "configs/vqa_tiny.yaml"), f"data.root={shapes_root}",
                              f"train.output_dir={out}", "vqa.group_by_image=true", "vqa.init=null",
                              "train.batch_size=8", "data.num_workers=0", "train.warmup_steps=2",
                              "eval.batch_size=16", "train.max_steps=3"]) == 0
    results = json.loads((out / "vqa_results_val2014.json").read_text())
    questions = json.loads((shapes_root / "annotations/v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    assert sorted(r["question_id"] for r in results) == sorted(q["question_id"] for q in questions["questions"])
    assert "group_by_image: true" in (out / "config.yaml").read_text()
