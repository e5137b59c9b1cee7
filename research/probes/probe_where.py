"""Does a fine-tuned VQA model know where things are? Two measurements on the embedded val split.

1. **Position in the image tokens**: how well a patch token's column and row can be read off linearly (ridge
   regression, fitted on the tokens of 200 val images, R^2 on those of 100 others), from the image encoder's output
   and from its patch embedding alone (before the position embeddings are added). R^2 near 1: every token says where
   it is; near 0: the tokens carry no position the fusion encoder could read.
2. **Where the fusion encoder looks**: for the lone-object val images, the share of the cross-attention (mean over
   fusion layers, heads and question tokens: ``VQAPipeline.explain``) that falls on the patches the object covers,
   divided by their share of the image (1 = attention spread evenly), per question family.

    python research/probes/probe_where.py --model runs/demo/model [--json FILE]

``--model`` is a fine-tuned model folder (``tcl.load_vqa``), e.g. the demo's ``model``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import tcl
from tcl.config import load_config

# A pixel belongs to an object when one channel differs from the background (the corner pixel) by more than this:
# backgrounds are light greys drawn from 215-250 per channel, objects' colours at least 40 away from them.
OBJECT_THRESHOLD = 40
# A patch counts as the object's when the object covers more than this share of it.
PATCH_COVER = 0.25


def position_decodability(pipeline, images: list[Image.Image], fit: int) -> tuple[dict, dict[str, float]]:
    """Held-out R^2 of a ridge regression from each patch token to its column and row, and the spreads (std) of the
    position embeddings and of the patch embedding they are added to."""
    encoder = pipeline.model.vision_encoder.eval()
    pixels = pipeline.processor(images, ["x"] * len(images))["image"]
    with torch.no_grad():
        features = {"encoder_output": encoder(pixels)[:, 1:], "patch_embedding": encoder.patch_embed(pixels)}
    # How loud the place signal is against what it is added to: the position embeddings' spread and the stem's.
    spread = {"position_embeddings": float(encoder.pos_embed[0, 1:].detach().std()),
              "patch_embedding": float(features["patch_embedding"].std())}
    results = {}
    for name, tokens in features.items():
        n, patches, _ = tokens.shape
        side = int(round(patches ** 0.5))
        x = np.c_[tokens.reshape(n * patches, -1).numpy(), np.ones(n * patches)]
        train = np.arange(n * patches) < fit * patches
        results[name] = {}
        for target, values in (("column", np.arange(patches) % side), ("row", np.arange(patches) // side)):
            t = np.tile(values, n).astype(float)
            w = np.linalg.solve(x[train].T @ x[train] + 1e-2 * np.eye(x.shape[1]), x[train].T @ t[train])
            residual = x[~train] @ w - t[~train]
            results[name][target] = float(1 - (residual ** 2).mean() / t[~train].var())
    return results, spread


def attention_on_object(pipeline, root: Path, images: dict[int, dict], questions: dict[int, str],
                        annotations: list[dict]) -> dict[str, dict[str, float]]:
    """Per question family: mean ratio of the attention's share on the object's patches to their area share."""
    ratios: dict[str, list[float]] = defaultdict(list)
    for annotation in annotations:
        image = images[annotation["image_id"]]
        if image["num_objects"] != 1:
            continue
        picture = Image.open(root / "images" / "val2014" / image["file_name"]).convert("RGB")
        pixels = np.asarray(picture).astype(float)
        covered = np.abs(pixels - pixels[1, 1]).max(axis=2) > OBJECT_THRESHOLD
        _, grid = pipeline.explain(picture, questions[annotation["question_id"]])
        grid = grid.numpy()
        side = grid.shape[0]
        size = pixels.shape[0] // side
        on_object = covered.reshape(side, size, side, size).mean(axis=(1, 3)) > PATCH_COVER
        if not on_object.any():
            continue
        ratios[annotation["question_family"]].append(float((grid * on_object).sum() / grid.sum() / on_object.mean()))
    return {family: {"ratio": float(np.mean(values)), "questions": len(values)} for family, values in ratios.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a fine-tuned model folder (tcl.load_vqa)")
    parser.add_argument("--data", default=None, help="dataset root (default: the embedded default's, data/shapes)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    root = Path(args.data or load_config("vqa_tiny").data.root)
    annotations_dir = root / "annotations"
    images = {i["id"]: i for i in json.loads((annotations_dir / "captions_val2014.json").read_text())["images"]}
    if "num_objects" not in next(iter(images.values())):
        raise SystemExit(f"{root}: generated before the annotations carried num_objects; regenerate it: "
                         f"tcl make-data --out {root} --force")
    questions = {q["question_id"]: q["question"] for q in json.loads(
        (annotations_dir / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]}
    annotations = json.loads((annotations_dir / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    pipeline = tcl.load_vqa(args.model)
    first = [Image.open(root / "images" / "val2014" / image["file_name"]).convert("RGB")
             for image in list(images.values())[:300]]
    r2, spread = position_decodability(pipeline, first, fit=200)
    results = {"model": args.model, "position_r2": r2, "std": spread,
               "attention_on_object_lone_objects": attention_on_object(pipeline, root, images, questions, annotations)}
    print(f"std of the position embeddings {spread['position_embeddings']:.3f}, of the patch embedding "
          f"{spread['patch_embedding']:.3f}")
    for name, r2 in results["position_r2"].items():
        print(f"position from {name}: R^2 column {r2['column']:.2f}, row {r2['row']:.2f}")
    for family, entry in sorted(results["attention_on_object_lone_objects"].items()):
        print(f"{family}: attention on the object {entry['ratio']:.2f} x even ({entry['questions']} questions)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
