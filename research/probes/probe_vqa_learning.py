"""How fast the VQA model learns each kind of question: a diagnostic for the embedded data.

Trains the VQA model (classifier head, from scratch) on the generated train split with every image decoded once
into memory (no augmentation, no DataLoader: only the model's own learning speed is measured) and prints, after each
epoch, the official VQA accuracy on val per question family (color, shape, count, existence, position, relation) and
on 2,000 train questions. Config overrides select the arm:

    python research/probes/probe_vqa_learning.py --epochs 2                                   # the tiny config
    python research/probes/probe_vqa_learning.py --epochs 2 model.num_hidden_layers=6        # 4 fusion layers
    python research/probes/probe_vqa_learning.py --epochs 2 model.vision_stem=conv train.lr=1e-3 --json probe.json
    python research/probes/probe_vqa_learning.py --epochs 4 --group-by-image                # image-grouped batches
    python research/probes/probe_vqa_learning.py --epochs 20 --kinds shape                   # one skill alone
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict

import torch

from tcl.config import load_config
from tcl.data.builders import build_tokenizer, build_vqa_dataset
from tcl.json_io import load_json
from tcl.data.transforms import test_transform
from tcl.data.vqa import official_paths
from tcl.engine.finetune_vqa import answer_vocabulary
from tcl.models.vqa import vqa_model_from_config
from tcl.engine.optim import build_optimizer, learning_rate
from tcl.evaluation import vqa_accuracy
from tcl.evaluation.answers import soft_target_matrix
from tcl.models.pretrained import initialise_from_pretrained


def load_split(config, train: bool):
    """The split's dataset and every sample decoded once (test transform: no augmentation), each with the
    generator's question family."""
    dataset = build_vqa_dataset(config, train=train)
    dataset.transform = test_transform(config.model.image_size)
    families = {}
    for split in config.data.vqa_train if train else [config.data.vqa_eval]:
        annotations = load_json(official_paths(config.data.root, split)[1])["annotations"]
        if annotations and "question_family" not in annotations[0]:
            root = config.data.root
            raise SystemExit(f"{root}: generated before the annotations carried question_family and num_objects "
                             f"(2026-12-02); regenerate it: tcl make-data --out {root} --force")
        families.update({a["question_id"]: a["question_family"] for a in annotations})
    rows = [dataset[i] for i in range(len(dataset))]
    return dataset, [{**row, "family": families[row["question_id"]]} for row in rows]


def tensors(rows: list[dict], tokenizer, vocabulary) -> tuple[torch.Tensor, ...]:
    text = tokenizer.encode_texts([r["question"] for r in rows], 25)
    return (torch.stack([r["image"] for r in rows]), text.input_ids, text.attention_mask,
            soft_target_matrix([r["human_answers"] for r in rows], vocabulary))


def epoch_order(rows: list[dict], grouped: bool, generator: torch.Generator) -> torch.Tensor:
    """A permutation of the questions; ``grouped`` keeps each image's questions together (vqa.group_by_image)."""
    if not grouped:
        return torch.randperm(len(rows), generator=generator)
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(row["image_key"], []).append(index)
    members = list(groups.values())
    return torch.cat([torch.tensor(members[g]) for g in torch.randperm(len(members), generator=generator).tolist()])


def training_loss(model, train: tuple[torch.Tensor, ...], rows: list[dict], index: torch.Tensor, grouped: bool):
    """The batch loss; grouped batches encode each image once (``image_index``)."""
    images, ids, mask, targets = (t[index] for t in train)
    if not grouped:
        return model(images, ids, mask, targets=targets).loss
    keys: dict[str, int] = {}
    image_index = torch.tensor([keys.setdefault(rows[i]["image_key"], len(keys)) for i in index.tolist()])
    first = torch.zeros(len(keys), dtype=torch.long).scatter_(0, image_index.flip(0), torch.arange(len(index)).flip(0))
    return model(images[first], ids, mask, targets=targets, image_index=image_index).loss


@torch.no_grad()
def accuracy_by_kind(model, data, rows, vocabulary) -> dict[str, float]:
    model.eval()
    images, ids, mask, _ = data
    predictions = torch.cat([model(images[s:s + 256], ids[s:s + 256], mask[s:s + 256]).logits.argmax(-1)
                             for s in range(0, len(rows), 256)])
    model.train()
    scores = defaultdict(list)
    for row, prediction in zip(rows, predictions.tolist()):
        score = vqa_accuracy(vocabulary.answers[prediction], row["human_answers"])
        scores[row["family"]].append(score)
        scores["all"].append(score)
    return {kind: round(100 * sum(v) / len(v), 2) for kind, v in sorted(scores.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="vqa_tiny")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the per-epoch results here")
    parser.add_argument("--group-by-image", action="store_true",
                        help="batches of whole images' questions, each image encoded once (vqa.group_by_image)")
    parser.add_argument("--kinds", type=lambda text: text.split(","), default=None,
                        help="comma-separated question kinds to train and evaluate on alone (e.g. shape): one skill")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides (the arm)")
    args = parser.parse_args(argv)
    # Its own loop trains the classifier head, whatever head the config fine-tunes.
    config = load_config(args.config, ["vqa.init=null", "vqa.head=classifier", *args.overrides])
    torch.manual_seed(config.train.seed)
    tokenizer = build_tokenizer(config)
    start = time.perf_counter()
    (train_set, train_rows), (_, val_rows) = load_split(config, True), load_split(config, False)
    if args.kinds:
        train_rows, val_rows = ([r for r in rows if r["family"] in args.kinds]
                                for rows in (train_rows, val_rows))
    vocabulary = answer_vocabulary(train_set, config)
    train, val = tensors(train_rows, tokenizer, vocabulary), tensors(val_rows, tokenizer, vocabulary)
    probe = slice(0, len(train_rows), max(1, len(train_rows) // 2000))
    probe_rows, probe_data = train_rows[probe][:2000], tuple(t[probe][:2000] for t in train)
    print(f"loaded {len(train_rows)} train / {len(val_rows)} val questions in {time.perf_counter() - start:.0f} s")

    model = vqa_model_from_config(config, len(tokenizer), len(vocabulary), training=True)
    initialise_from_pretrained(model, config.model)
    optimizer = build_optimizer(model, config.train)
    batch, steps_per_epoch = config.train.batch_size, len(train_rows) // config.train.batch_size
    total, step, history = steps_per_epoch * args.epochs, 0, []
    order = torch.Generator().manual_seed(config.train.seed)
    for epoch in range(args.epochs):
        permutation, start, loss_sum = epoch_order(train_rows, args.group_by_image, order), time.perf_counter(), 0.0
        for b in range(steps_per_epoch):
            index = permutation[b * batch:(b + 1) * batch]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total, config.train)
            loss = training_loss(model, train, train_rows, index, args.group_by_image)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step, loss_sum = step + 1, loss_sum + loss.item()
        result = {"epoch": epoch + 1, "loss": round(loss_sum / steps_per_epoch, 4),
                  "seconds": round(time.perf_counter() - start, 1),
                  "val": accuracy_by_kind(model, val, val_rows, vocabulary),
                  "train": accuracy_by_kind(model, probe_data, probe_rows, vocabulary)["all"]}
        history.append(result)
        print(json.dumps(result), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"overrides": args.overrides, "group_by_image": args.group_by_image, "epochs": history}, handle,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
