"""What loading the pretraining batches costs: CPU time per sample and per batch, and what the DataLoader workers'
work costs the training step that runs beside them.

    python benchmarks/bench_loading.py                              # pretrain_tiny, workers 0 1 2
    python benchmarks/bench_loading.py --workers 2 --steps 60 --json out.json
    python benchmarks/bench_loading.py --config pretrain_tiny data.crop_scale_min=0.5

Part 1 times, on one thread in this process, ``dataset[key]`` (decoding and two augmented views) over ``--samples``
sampler keys and the collation (tokenising, stacking) of batches of ``train.batch_size``; and one view made by the
config's transform against the same chain on torchvision's v2 steps (``RandomResizedCrop``, ``ToImage``,
``ToDtype``, ``Normalize``, which ours reproduce bit for bit), the two timed in turn on the same images.

Part 2 trains the real model on the real loader for ``--steps`` optimizer steps per worker count, and times every
batch twice: the step on the batch just taken from the loader (while the workers prepare the next ones), then a
second step on the same batch. The ratio of the two, per batch, is what loading beside the training costs it. On a
2-core machine the workers take CPU from torch's two OpenMP threads, and each stall of one thread holds the other
at the next barrier. A ratio within one run does not depend on how fast the machine is at that moment, which on
shared machines drifts by 15 % within minutes (docs/BENCHMARKS.md, "The loading path").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="pretrain_tiny")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per worker count (0: part 1 only)")
    parser.add_argument("--warmup", type=int, default=5, help="steps run before timing, per worker count")
    parser.add_argument("--samples", type=int, default=320, help="samples timed in part 1")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/bench_loading.json"))
    return parser.parse_args(argv)


def loading_cost(config, samples: int) -> dict:
    """Milliseconds of one thread per sample (load and two views) and per collated batch."""
    from tcl.data.builders import build_pretrain_dataset, build_tokenizer, pretrain_collator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        dataset = build_pretrain_dataset(config)
        collate = pretrain_collator(config, build_tokenizer(config))
        keys = [len(dataset) + k for k in range(samples)]  # epoch-1 keys: not the ones warmed up below
        for key in range(16):
            dataset[key]
        start = time.perf_counter()
        loaded = [dataset[key] for key in keys]
        per_sample = (time.perf_counter() - start) / samples
        size = config.train.batch_size
        batches = [loaded[i:i + size] for i in range(0, samples - size + 1, size)]
        start = time.perf_counter()
        for batch in batches:
            collate(batch)
        per_batch = (time.perf_counter() - start) / len(batches)
        ours, torchvision = view_costs(dataset, keys)
    finally:
        torch.set_num_threads(threads)
    return {"sample_ms": 1e3 * per_sample, "collate_ms": 1e3 * per_batch,
            "batch_ms": 1e3 * (size * per_sample + per_batch), "view_ms": ours, "view_ms_torchvision_v2": torchvision}


def view_costs(dataset, keys: list[int]) -> tuple[float, float]:
    """Median milliseconds of one view by the dataset's transform and by its torchvision v2 equivalent, in turn."""
    from torchvision.transforms import InterpolationMode, v2

    from tcl.data import transforms as T

    ours = dataset.transform
    steps = []
    for step in ours.transforms:
        if isinstance(step, T.RandomResizedCrop):
            steps.append(v2.RandomResizedCrop(step.size, scale=step.scale, ratio=step.ratio,
                                              interpolation=InterpolationMode.BICUBIC, antialias=True))
        elif isinstance(step, T.ToPixels):
            steps += [v2.ToImage(), v2.ToPureTensor()]
        else:
            steps.append(step)
    torchvision = v2.Compose(steps)
    images = [dataset._image(dataset.table[key % len(dataset)][dataset.image_column]) for key in keys[:64]]
    times: dict = {"ours": [], "torchvision": []}
    for _ in range(5):
        for name, transform in (("ours", ours), ("torchvision", torchvision)):
            start = time.perf_counter()
            for image in images:
                transform(image)
            times[name].append((time.perf_counter() - start) / len(images))
    return 1e3 * statistics.median(times["ours"]), 1e3 * statistics.median(times["torchvision"])


def step_beside_workers(config, workers: int, steps: int, warmup: int) -> dict:
    """Median step time on fresh batches and on the same batches again, and the median of their per-batch ratio."""
    from tcl.data.builders import build_loader, build_pretrain_dataset, build_tokenizer, pretrain_collator
    from tcl.engine.optim import build_optimizer
    from tcl.engine.pretrain import build_model, pretrain_step

    tokenizer = build_tokenizer(config)
    dataset = build_pretrain_dataset(config)
    loader = build_loader(dataset, pretrain_collator(config, tokenizer), config.train.batch_size, shuffle=True,
                          num_workers=workers, seed=config.train.seed, drop_last=True)
    torch.manual_seed(config.train.seed)
    model = build_model(config, tokenizer, None).train()
    optimizer = build_optimizer(model, config.train)
    device = torch.device("cpu")

    def step(batch: dict) -> float:
        start = time.perf_counter()
        pretrain_step(model, batch, 0.0, True, device, 0).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    fresh, again = [], []
    for index, batch in enumerate(loader):
        if index == warmup + steps:
            break
        first, second = step(batch), step(batch)
        if index >= warmup:
            fresh.append(first)
            again.append(second)
    if not fresh:
        raise SystemExit(f"one epoch has {len(loader)} batches: fewer than --warmup {warmup} + --steps {steps}")
    ratios = [a / b for a, b in zip(fresh, again)]
    return {"workers": loader.num_workers, "fresh_s": statistics.median(fresh), "again_s": statistics.median(again),
            "ratio": statistics.median(ratios)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tcl.config import load_config

    config = load_config(args.config, args.overrides, world_size=1)
    cost = loading_cost(config, args.samples)
    print(f"loading on one thread: {cost['sample_ms']:.2f} ms a sample (load and two views), "
          f"{cost['collate_ms']:.1f} ms a collation, {cost['batch_ms']:.0f} ms a batch of {config.train.batch_size}; "
          f"a view {cost['view_ms']:.2f} ms (on torchvision's v2 steps {cost['view_ms_torchvision_v2']:.2f} ms)")
    rows = []
    print("| workers | step on a fresh batch | the same batch again | ratio (median per batch) |")
    print("|---|---|---|---|")
    for workers in args.workers if args.steps else []:
        row = step_beside_workers(config, workers, args.steps, args.warmup)
        rows.append(row)
        print(f"| {row['workers']} | {row['fresh_s']:.3f} s | {row['again_s']:.3f} s | {row['ratio']:.3f} |",
              flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"config": args.config, "overrides": args.overrides, "loading": cost,
                                     "steps": rows, "torch": torch.__version__}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
