"""Does a run pretrained with the grounding term (``loss.grounding_weight``) find the object a phrase names? Its box
predictions on the embedded val split, split by how many objects the image holds: on a lone object the phrase needs
no selection, only where the object is; with several, the phrase must pick one out.

    python research/probes/probe_grounding.py --run runs/ground1 [--images 300] [--json FILE]

Prints, per object count, the phrases found with IoU >= 0.5, the mean IoU and the mean distance of the predicted
centre from the true one (in fractions of the image side), against a constant box (the mean true box of the set):
the accuracy that reading nothing off the image gets. Twice: with each object's full phrase ("small red circle"),
and with its shape alone ("circle", for the objects whose shape is unique in their image), which needs the shape
seen to pick the object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import tcl
from tcl.config import load_config
from tcl.data.builders import build_tokenizer
from tcl.evaluation.coco_sets import coco_grounding_set
from tcl.evaluation.grounding import paired_iou


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a pretraining run folder trained with loss.grounding_weight")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    config = load_config(Path(args.run) / "config.yaml")
    model = tcl.load_pretrained(args.run)
    results = {"run": args.run}
    for name, category_only in (("full phrases", False), ("shape alone", True)):
        print(f"{name}:")
        results[name] = measure(model, config, args.images, category_only)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def measure(model, config, max_images: int, category_only: bool) -> dict:
    root = Path(config.data.root)
    data = coco_grounding_set(root / "annotations/instances_val2014.json", root / config.data.image_root,
                              build_tokenizer(config), config.model.image_size, max_images, config.model.max_text_len,
                              category_only=category_only)
    with torch.no_grad():
        predicted = model.predict_boxes(model.encode_image(data.images)[0], data.input_ids, data.attention_mask,
                                        data.image_index)[:, 0]
    images = json.loads((root / "annotations/captions_val2014.json").read_text())["images"]
    objects = {image["id"]: image["num_objects"] for image in images}
    counts = torch.tensor([objects[data.image_ids[i]] for i in data.image_index.tolist()])
    constant = data.boxes.mean(dim=0, keepdim=True).expand_as(data.boxes)
    table = {}
    for label, rows in [("all", torch.ones_like(counts, dtype=torch.bool))] + \
            [(f"{n} object{'s' * (n > 1)}", counts == n) for n in sorted(set(counts.tolist()))]:
        row = {"phrases": int(rows.sum())}
        for name, boxes in (("model", predicted), ("constant box", constant)):
            iou = paired_iou(boxes[rows], data.boxes[rows])
            centre = (boxes[rows, :2] - data.boxes[rows, :2]).norm(dim=1)
            row[name] = {"iou50": round(100 * (iou >= 0.5).float().mean().item(), 1),
                         "mean_iou": round(100 * iou.mean().item(), 1), "centre_error": round(centre.mean().item(), 3)}
        table[label] = row
    print("| images | phrases | IoU >= 0.5 (model / constant) | mean IoU | centre error |\n|---|---|---|---|---|")
    for label, row in table.items():
        m, c = row["model"], row["constant box"]
        print(f"| {label} | {row['phrases']} | {m['iou50']} / {c['iou50']} | {m['mean_iou']} / {c['mean_iou']} | "
              f"{m['centre_error']} / {c['centre_error']} |")
    return {"images": len(data.images), **table}


if __name__ == "__main__":
    sys.exit(main())
