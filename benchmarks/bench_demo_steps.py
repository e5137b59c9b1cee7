"""Where a step of the demo's training stages goes: the pretraining (``pretrain_tiny``) and the VQA fine-tuning
(``vqa_tiny``, from a pretraining run or from scratch), each step split into loading, forward, backward and optimizer,
and the forward into the model's parts. Real loaders over the demo's world, real batches, real optimizer steps.

    taskset -c 0,1 python benchmarks/bench_demo_steps.py pretrain --threads 2
    taskset -c 0,1 python benchmarks/bench_demo_steps.py pretrain --threads 2 loss.itm_negative_pairs=half
    taskset -c 0 python benchmarks/bench_demo_steps.py finetune --threads 1 --init runs/pretrain_tiny
    taskset -c 0 python benchmarks/bench_demo_steps.py finetune --threads 1          # the arm from scratch

The first ``--warmup`` steps are left out; each figure is the median over ``--steps`` steps in milliseconds.
``--json`` writes the figures with the command's settings.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch

from tcl.config import load_config, resolve_config
from tcl.data.builders import build_loader, build_pretrain_loader, build_tokenizer, build_vqa_dataset
from tcl.engine.finetune_vqa import answer_vocabulary, build_vqa_model, target_collator, vqa_step
from tcl.engine.optim import build_optimizer
from tcl.engine.pretrain import build_model, pretrain_step

# The forward's parts timed in each stage: (attribute path on the model, method).
PRETRAIN_PARTS = [("", "encode_image"), ("", "encode_text"), ("", "_teacher"), ("", "_itm"), ("", "_mlm"),
                  ("", "_grounding"), ("region_head", "loss")]
FINETUNE_PARTS = [("vision_encoder", "forward_features"), ("text_encoder", "forward"),
                  ("fusion_encoder", "forward"), ("text_decoder", "forward"), ("answer_head", "forward")]


def timed_parts(model: torch.nn.Module, parts: list[tuple[str, str]], totals: dict[str, float]) -> None:
    """Replaces each part's method on its instance by one that adds its wall time to ``totals[name]``."""
    for owner_path, method in parts:
        try:
            owner = model.get_submodule(owner_path)
        except AttributeError:
            continue  # a part this model does not have (the classifier head, or the decoder)
        setattr(owner, method, _timer(getattr(owner, method), owner_path or method, totals))


def _timer(function: Callable, name: str, totals: dict[str, float]) -> Callable:
    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        totals[name] += time.perf_counter() - start
        return result
    return timed


def build_stage(stage: str, config_name: str, overrides: list[str], init: str | None):
    """(model, optimizer, loader, step function, forward parts) of a stage, as its command builds them."""
    if stage == "pretrain":
        config = load_config(resolve_config(config_name or "pretrain_tiny"), overrides)
        tokenizer = build_tokenizer(config)
        loader = build_pretrain_loader(config, tokenizer, 0, 1)
        torch.manual_seed(config.train.seed)
        model = build_model(config, tokenizer, None)
        return model, build_optimizer(model, config.train), loader, pretrain_step, PRETRAIN_PARTS
    config = load_config(resolve_config(config_name or "vqa_tiny"), [f"vqa.init={init or ''}", *overrides])
    tokenizer = build_tokenizer(config)
    dataset = build_vqa_dataset(config, train=True)
    vocabulary = answer_vocabulary(dataset, config)
    loader = build_loader(dataset, target_collator(config, tokenizer, vocabulary), config.train.batch_size,
                          shuffle=True, num_workers=0, seed=config.train.seed, drop_last=True,
                          groups=dataset.image_groups() if config.vqa.group_by_image else None)
    torch.manual_seed(config.train.seed)
    model = build_vqa_model(config, len(tokenizer), len(vocabulary), training=True)
    return model, build_optimizer(model, config.train), loader, vqa_step, FINETUNE_PARTS


def measure(stage: str, steps: int, warmup: int, config_name: str | None = None, overrides: list[str] = (),
            init: str | None = None) -> dict[str, float]:
    """Median milliseconds of a step's loading, forward, backward, optimizer and forward parts."""
    model, optimizer, loader, step_fn, parts = build_stage(stage, config_name, list(overrides), init)
    model.train()
    batches = iter(loader)
    parts_time: dict[str, float] = defaultdict(float)
    timed_parts(model, parts, parts_time)
    samples: dict[str, list[float]] = defaultdict(list)
    for index in range(warmup + steps):
        parts_time.clear()
        start = time.perf_counter()
        batch = next(batches)
        loaded = time.perf_counter()
        loss = step_fn(model, batch, 0.4, True, "cpu").loss
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = time.perf_counter()
        if index < warmup:
            continue
        for name, seconds in (("loading", loaded - start), ("forward", forward - loaded),
                              ("backward", backward - forward), ("optimizer", done - backward),
                              ("step", done - start), *((f"forward: {k}", v) for k, v in parts_time.items())):
            samples[name].append(seconds)
    return {name: round(1000 * statistics.median(values), 1) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=["pretrain", "finetune"])
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    parser.add_argument("--config", help="a config file or shipped name (default: pretrain_tiny or vqa_tiny)")
    parser.add_argument("--init", help="fine-tuning: the pretraining run to start from (none: from scratch)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_intermixed_args(argv)
    torch.set_num_threads(args.threads)
    figures = measure(args.stage, args.steps, args.warmup, args.config, args.overrides, args.init)
    print(f"| {args.stage} ({args.threads} thread(s)) | ms a step (median of {args.steps}) |\n|---|---|")
    for name, milliseconds in figures.items():
        print(f"| {name} | {milliseconds} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"stage": args.stage, "threads": args.threads, "init": args.init,
                                         "overrides": args.overrides, "steps": args.steps, "milliseconds": figures,
                                         "machine": platform.processor() or platform.machine(),
                                         "torch": torch.__version__}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
