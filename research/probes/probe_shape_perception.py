"""Can the tiny ViT see shapes at all? A direct check, apart from VQA.

Renders single-object scenes of the embedded world (tcl.data.shapes), trains the VQA config's image encoder from
scratch with a linear head on its class token to name the object's shape (4 classes), and prints held-out accuracy
every 100 steps. If the encoder learns this quickly with direct labels, a VQA model that stays at chance on "what
shape is the ...?" is limited by how little shape supervision reaches the encoder, not by what it can represent.

    python research/probes/probe_shape_perception.py                          # patch stem, lr 3e-4, 400 steps
    python research/probes/probe_shape_perception.py model.vision_stem=conv --steps 400 --json shape_probe.json
    python research/probes/probe_shape_perception.py --through-vqa      # the same task asked as a question to the VQA model
    python research/probes/probe_shape_perception.py --task side [--through-vqa]   # left or right of the centre instead
    python research/probes/probe_shape_perception.py --through-vqa --max-objects 4 --steps 800 [--init runs/demo/pretrain]
    python research/probes/probe_shape_perception.py --save-vision vit.pt && \
        python research/probes/probe_shape_perception.py --through-vqa --max-objects 4 --steps 800 --init-vision vit.pt

``--through-vqa`` asks "what shape is the <colour> object?" about the same images and trains the whole VQA model
(image, text and fusion encoders, classifier head over the four shapes, cross-entropy): the gap to the direct probe
is what routing the supervision through the question and the cross-attention costs. ``--loss bce`` trains with the
VQA classifier's loss instead (binary cross-entropy summed over the classes, one-hot targets).
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
from tcl.data.builders import build_tokenizer
from tcl.data.shapes import SHAPES, place_object, render_scene
from tcl.data.transforms import test_transform
from tcl.models.saving import read_model_state
from tcl.models.vision import build_vision_encoder
from tcl.models.vqa import TCLVQAModel


# What the probe asks about the first object: its classes and the question that names it by its colour.
TASKS = {"shape": (SHAPES, "what shape is the {} object?"),
         "side": (("left", "right"), "where is the {} object, left or right?")}


def scene_images(count: int, image_size: int, rng: np.random.Generator, max_objects: int = 1, task: str = "shape"
                 ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``count`` normalised images of 1..``max_objects`` objects of different colours, the first object's class
    for ``task`` (its shape's index in ``SHAPES``, or 0/1 for left/right of the centre), and its colour (which names
    it). For ``side`` the first object keeps the dataset's margin from the vertical centre line."""
    transform, images, labels, colours = test_transform(image_size), [], [], []
    for _ in range(count):
        objects = [place_object(rng, image_size, [])]
        while task == "side" and abs(objects[0].x - image_size / 2) <= 0.1 * image_size:
            objects = [place_object(rng, image_size, [])]
        for _ in range(int(rng.integers(1, max_objects + 1)) - 1):
            other = place_object(rng, image_size, objects)
            if other is not None and other.color not in {o.color for o in objects}:
                objects.append(other)
        images.append(transform(render_scene(objects, image_size, rng)))
        labels.append(SHAPES.index(objects[0].shape) if task == "shape" else int(objects[0].x > image_size / 2))
        colours.append(objects[0].color)
    return torch.stack(images), torch.tensor(labels), colours


class ViTShapeClassifier(nn.Module):
    """The image encoder's class token → linear layer over the classes (the shapes by default)."""

    def __init__(self, config, classes: int = len(SHAPES)):
        super().__init__()
        self.encoder = build_vision_encoder(config.model)
        self.head = nn.Linear(config.model.vision_width, classes)

    def forward(self, images: torch.Tensor, questions: tuple) -> torch.Tensor:
        return self.head(self.encoder.forward_features(images)[:, 0])


class VQAShapeClassifier(nn.Module):
    """The whole VQA model (classifier head over the classes, the four shapes by default) answering the question
    about the image."""

    def __init__(self, config, vocab_size: int, init: str | None = None, classes: int = len(SHAPES)):
        super().__init__()
        self.model = TCLVQAModel(config.model, vocab_size, classes)
        if init:
            self.model.load_pretrained_encoders(read_model_state(init))

    def forward(self, images: torch.Tensor, questions: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.model(images, *questions).logits


def shape_questions(tokenizer, colours: list[str], template: str = TASKS["shape"][1]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    text = tokenizer.encode_texts([template.format(colour) for colour in colours], 25)
    return text.input_ids, text.attention_mask


def shape_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, or the VQA classifier's BCE summed over the classes (mean over the batch)."""
    if kind == "ce":
        return nn.functional.cross_entropy(logits, labels)
    targets = nn.functional.one_hot(labels, logits.shape[1]).float()
    return nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="vqa_tiny")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--train-images", type=int, default=6000)
    parser.add_argument("--json", default=None)
    parser.add_argument("--max-objects", type=int, default=1,
                        help="scenes of 1..N objects of different colours; the question names one by its colour")
    parser.add_argument("--init", default=None, help="(--through-vqa) start from this pretraining run or checkpoint")
    parser.add_argument("--init-vision", default=None,
                        help="(--through-vqa) start the image encoder from a file written by --save-vision")
    parser.add_argument("--save-vision", default=None, help="write the trained image encoder's weights here")
    parser.add_argument("--through-vqa", action="store_true",
                        help="ask the VQA model instead of reading the class token")
    parser.add_argument("--task", choices=tuple(TASKS), default="shape",
                        help="side: left or right of the centre instead of the shape")
    parser.add_argument("--loss", choices=("ce", "bce"), default="ce",
                        help="bce: the VQA classifier's loss (summed binary cross-entropy) instead of cross-entropy")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides (e.g. model.vision_stem=conv)")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    rng = np.random.default_rng(0)
    classes, template = TASKS[args.task]
    train_x, train_y, train_colours = scene_images(args.train_images, config.model.image_size, rng, args.max_objects,
                                                   args.task)
    test_x, test_y, test_colours = scene_images(500, config.model.image_size, rng, args.max_objects, args.task)
    torch.manual_seed(config.train.seed)
    if args.through_vqa:
        tokenizer = build_tokenizer(config)
        model = VQAShapeClassifier(config, len(tokenizer), args.init, len(classes))
        if args.init_vision:
            model.model.vision_encoder.load_state_dict(torch.load(args.init_vision, weights_only=True))
        train_q = shape_questions(tokenizer, train_colours, template)
        test_q = shape_questions(tokenizer, test_colours, template)
    else:
        model = ViTShapeClassifier(config, len(classes))
        train_q = test_q = ()  # the class token needs no question
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.02)
    history, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(train_x), (config.train.batch_size,))
        loss = shape_loss(args.loss, model(train_x[index], tuple(q[index] for q in train_q)), train_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                accuracy = (model(test_x, test_q).argmax(1) == test_y).float().mean().item()
            model.train()
            history.append({"step": step, "loss": round(loss.item(), 4), "test_accuracy": round(100 * accuracy, 1),
                            "seconds": round(time.perf_counter() - start, 1)})
            print(json.dumps(history[-1]), flush=True)
    if args.save_vision:
        encoder = model.model.vision_encoder if args.through_vqa else model.encoder
        torch.save(encoder.state_dict(), args.save_vision)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"overrides": args.overrides, "lr": args.lr, "through_vqa": args.through_vqa,
                       "max_objects": args.max_objects, "task": args.task, "loss": args.loss, "init": args.init,
                       "init_vision": args.init_vision, "history": history}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
