"""Does a pretrained image encoder know the objects' shapes? A linear probe on its frozen tokens.

Renders fresh scenes of the embedded world, encodes them with the image encoder of a pretraining run (frozen, eval
mode), pools its tokens three ways (class token, mean and max over the patch tokens, concatenated) and fits a linear
classifier on top: for lone objects, which of the four shapes it is (chance 25 %); for scenes of 1-4 objects, for each
shape whether the scene holds one (four yes/no answers; the majority answer per shape is the floor printed beside it).
The same encoder freshly initialised (``--run random``) is the baseline: random convolutional features already carry
some shape. If the pretrained encoder is no better than that, the pretraining did not teach the image tower shapes and
no fusion or head downstream can read them.

    python research/probes/probe_frozen_shapes.py --run runs/pretrain_tiny
    python research/probes/probe_frozen_shapes.py --run random --json random.json
    python research/probes/probe_shape_perception.py model.vision_stem=conv --save-vision vit.pt && \
        python research/probes/probe_frozen_shapes.py --run vit.pt     # an encoder trained on shape labels
"""

from __future__ import annotations

import argparse
import json
import sys

from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling probe, also when loaded from a file path
from probe_shape_perception import scene_images  # noqa: E402  (its scene renderer)

from tcl.config import load_config
from tcl.data.shapes import SHAPES, place_object, render_scene
from tcl.data.transforms import test_transform
from tcl.models.vision import build_vision_encoder


def encoder_for(run: str, config_name: str) -> nn.Module:
    """The online image encoder of a pretraining run, the config's encoder at initialisation (``random``), or that
    encoder with the weights of a ``.pt`` file (``probe_shape_perception.py --save-vision``)."""
    if run == "random" or run.endswith(".pt"):
        torch.manual_seed(0)
        encoder = build_vision_encoder(load_config(config_name).model)
        if run.endswith(".pt"):
            encoder.load_state_dict(torch.load(run, weights_only=True))
        return encoder.eval()
    import tcl
    return tcl.load_pretrained(run).vision_encoder.eval()


@torch.no_grad()
def pooled_tokens(encoder: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """[N, 3 * width]: class token, mean and max of the patch tokens."""
    rows = []
    for start in range(0, len(images), batch):
        tokens = encoder.forward_features(images[start:start + batch])
        patches = tokens[:, 1:]
        rows.append(torch.cat([tokens[:, 0], patches.mean(1), patches.amax(1)], dim=1))
    return torch.cat(rows)


def presence_scenes(count: int, image_size: int, rng: np.random.Generator, max_objects: int = 4
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images of 1..``max_objects`` objects (any colours) and [count, 4] float: which shapes each holds."""
    transform, images, labels = test_transform(image_size), [], []
    for _ in range(count):
        objects = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            placed = place_object(rng, image_size, objects)
            if placed is not None:
                objects.append(placed)
        images.append(transform(render_scene(objects, image_size, rng)))
        labels.append([float(any(o.shape == shape for o in objects)) for shape in SHAPES])
    return torch.stack(images), torch.tensor(labels)


def fit_linear(train_x, train_y, test_x, multilabel: bool, steps: int = 500) -> torch.Tensor:
    """A linear layer on standardised features, full-batch AdamW; returns the test predictions (class indices, or
    [N, 4] booleans)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(0)
    head = nn.Linear(train_x.shape[1], train_y.shape[1] if multilabel else len(SHAPES))
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-2)
    loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(head(train_x), train_y).backward()
        optimizer.step()
    with torch.no_grad():
        logits = head(test_x)
    return logits > 0 if multilabel else logits.argmax(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True,
                        help="a pretraining run folder, 'random' for the untrained encoder, or an encoder's .pt")
    parser.add_argument("--config", default="pretrain_tiny", help="(with --run random) whose model to build")
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=64, help="the encoder's input side in pixels")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    encoder = encoder_for(args.run, args.config)
    image_size = args.image_size
    rng = np.random.default_rng(0)
    result = {"run": args.run}

    lone_x, lone_y, _ = scene_images(args.train_images + args.test_images, image_size, rng, max_objects=1)
    features = pooled_tokens(encoder, lone_x)
    cut = args.train_images
    predicted = fit_linear(features[:cut], lone_y[:cut], features[cut:], multilabel=False)
    result["lone_shape_accuracy"] = round(100 * (predicted == lone_y[cut:]).float().mean().item(), 1)

    many_x, many_y = presence_scenes(args.train_images + args.test_images, image_size, rng)
    features = pooled_tokens(encoder, many_x)
    predicted = fit_linear(features[:cut], many_y[:cut], features[cut:], multilabel=True)
    truth = many_y[cut:].bool()
    result["presence_accuracy"] = {shape: round(100 * (predicted[:, i] == truth[:, i]).float().mean().item(), 1)
                                   for i, shape in enumerate(SHAPES)}
    result["presence_floor"] = {shape: round(100 * max(truth[:, i].float().mean().item(),
                                                       1 - truth[:, i].float().mean().item()), 1)
                                for i, shape in enumerate(SHAPES)}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
