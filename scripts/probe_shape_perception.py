"""Can the tiny ViT see shapes at all? A direct check, apart from VQA.

Renders single-object scenes of the embedded world (tcl.data.shapes), trains the VQA config's image encoder from
scratch with a linear head on its class token to name the object's shape (4 classes), and prints held-out accuracy
every 100 steps. If the encoder learns this quickly with direct labels, a VQA model that stays at chance on "what
shape is the ...?" is limited by how little shape supervision reaches the encoder, not by what it can represent.

    python scripts/probe_shape_perception.py                          # patch stem, lr 3e-4, 400 steps
    python scripts/probe_shape_perception.py model.vision_stem=conv --steps 400 --json shape_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from torch import nn

from tcl.config import load_config
from tcl.data.shapes import SHAPES, _place_object, render_scene
from tcl.data.transforms import test_transform
from tcl.models.vision import build_vision_encoder


def single_object_images(count: int, image_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` normalised images of one random object each, and the index of its shape in ``SHAPES``."""
    transform, images, labels = test_transform(image_size), [], []
    for _ in range(count):
        obj = _place_object(rng, image_size, [])
        images.append(transform(render_scene([obj], image_size, rng)))
        labels.append(SHAPES.index(obj.shape))
    return torch.stack(images), torch.tensor(labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/vqa_tiny.yaml")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--train-images", type=int, default=6000)
    parser.add_argument("--json", default=None)
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides (e.g. model.vision_stem=conv)")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    rng = np.random.default_rng(0)
    train_x, train_y = single_object_images(args.train_images, config.model.image_size, rng)
    test_x, test_y = single_object_images(500, config.model.image_size, rng)
    torch.manual_seed(config.train.seed)
    encoder, head = build_vision_encoder(config.model), nn.Linear(config.model.vision_width, len(SHAPES))
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=args.lr, weight_decay=0.02)
    history, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(train_x), (config.train.batch_size,))
        loss = nn.functional.cross_entropy(head(encoder.forward_features(train_x[index])[:, 0]), train_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == args.steps:
            with torch.no_grad():
                accuracy = (head(encoder.forward_features(test_x)[:, 0]).argmax(1) == test_y).float().mean().item()
            history.append({"step": step, "loss": round(loss.item(), 4), "test_accuracy": round(100 * accuracy, 1),
                            "seconds": round(time.perf_counter() - start, 1)})
            print(json.dumps(history[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"overrides": args.overrides, "lr": args.lr, "history": history}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
