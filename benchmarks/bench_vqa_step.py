"""VQA fine-tuning step time when questions share images (``vqa.group_by_image``) versus one image per question.

    python benchmarks/bench_vqa_step.py                          # tiny (32 questions) and base (8 questions), fp32
    python benchmarks/bench_vqa_step.py --configs tiny --steps 20 --json out.json

Each run builds the VQA model (classifier head, random weights, random inputs), and times full optimizer steps
(forward, BCE, backward, AdamW) on a batch of B questions whose images are B distinct images or only
ceil(B / 5.4) images, each encoded once for all its questions (5.4 = questions per image in VQA v2 and in the
embedded data). Both variants alternate step by step in one process, so the ratio does not depend on machine drift.
Writes JSON and prints one markdown row per configuration.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
QUESTIONS_PER_IMAGE = 5.4
CONFIGS = {
    "tiny": ("configs/vqa_tiny.yaml", [], 32),
    # ViT-B/16 + BERT-base at 384 px (TCL's VQA resolution), a batch that fits a CPU machine
    "base": ("configs/vqa.yaml", ["model.vision_pretrained=null", "model.text_pretrained=null"], 8),
}


def build(name: str):
    from tcl.config import load_config
    from tcl.engine.optim import build_optimizer
    from tcl.models.vqa import TCLVQAModel

    path, overrides, batch = CONFIGS[name]
    config = load_config(REPO / path, [*overrides, "vqa.init=null", "vqa.head=classifier"], world_size=1)
    torch.manual_seed(0)
    model = TCLVQAModel(config.model, config.model.vocab_size or 1000, 1000).train()
    return config, model, build_optimizer(model, config.train), batch


def inputs(config, batch: int, images: int) -> dict:
    generator = torch.Generator().manual_seed(images)
    size = config.model.image_size
    ids = torch.randint(5, 1000, (batch, 12), generator=generator)
    return {"image": torch.randn(images, 3, size, size, generator=generator), "input_ids": ids,
            "attention_mask": torch.ones_like(ids), "targets": torch.rand(batch, 1000, generator=generator),
            "image_index": torch.arange(batch) % images}


def step(model, optimizer, batch: dict) -> float:
    start = time.perf_counter()
    model(batch["image"], batch["input_ids"], batch["attention_mask"], targets=batch["targets"],
          image_index=batch["image_index"]).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def bench(name: str, steps: int, warmup: int) -> dict:
    config, model, optimizer, batch = build(name)
    variants = {"one image per question": inputs(config, batch, batch),
                "shared images": inputs(config, batch, math.ceil(batch / QUESTIONS_PER_IMAGE))}
    times: dict[str, list[float]] = {key: [] for key in variants}
    for index in range(warmup + steps):
        for key, batch_inputs in variants.items():
            seconds = step(model, optimizer, batch_inputs)
            if index >= warmup:
                times[key].append(seconds)
    medians = {key: statistics.median(values) for key, values in times.items()}
    return {"config": name, "questions": batch, "images_shared": variants["shared images"]["image"].shape[0],
            "step_s": medians, "questions_per_s": {key: batch / value for key, value in medians.items()},
            "speedup": medians["one image per question"] / medians["shared images"],
            "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = [bench(name, args.steps, args.warmup) for name in args.configs]
    print("| config | questions | images (shared) | step, one image per question | step, shared images | speed-up |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        separate, shared = row["step_s"]["one image per question"], row["step_s"]["shared images"]
        print(f"| {row['config']} | {row['questions']} | {row['images_shared']} | {separate:.3f} s | {shared:.3f} s | "
              f"{row['speedup']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
