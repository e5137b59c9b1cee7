"""Pretraining speed: step time, samples/s, peak memory, FLOPs per step and MFU, and the cost of the objectives.

    python benchmarks/bench_train.py                       # tiny and base configurations (fp32; add --dtypes fp32 bf16)
    python benchmarks/bench_train.py --configs tiny --steps 10 --json out.json
    python benchmarks/bench_train.py --configs tiny --steps 20 --ab train.fused_adamw=false:true \
        model.teacher_dropout=true:false model.attention_dropout=0.1:0.0     # in-process A/B of settings

Each run builds the TCL pretraining model with random weights and random inputs (so no data or downloads are
needed), times ``--steps`` full optimizer steps (forward with every loss, backward, AdamW, momentum update) after
``--warmup`` steps, and reports the median. FLOPs per step come from torch's FLOP counter over one step (forward and
backward; the optimizer and the EMA, which are not matmuls, are not counted). MFU = (FLOPs per step / median step
time) ÷ the FLOP/s of a dense square matmul of the same dtype measured in the same process, so the ratio does not
depend on how fast this particular machine happens to be. The objective part times the base configuration with a
65,536 queue under ``infonce``, ``debiased_neg`` and ``debiased_pos`` and reports the extra step time of the debiased
objectives over InfoNCE. Writes JSON and prints one markdown row per run.

``--ab KEY=A:B ...`` instead compares settings in one process: arm A has every listed key at its A value, each
other arm switches one key to its B value, the last arm all of them; the arms' steps are timed in turn (A, B1, B2,
..., A, B1, ...) so that drift of the machine hits every arm alike, and each arm's median is reported with its ratio
to A.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

CONFIGS = {
    "tiny": ("pretrain_tiny", [], 32),
    # ViT-B/16 + BERT-base at 224 px, a small batch that fits a CPU machine
    "base": ("pretrain_4m", ["model.image_size=224", "model.vision_pretrained=null",
                                          "model.text_pretrained=null"], 4),
    # TCL's pretraining size: ViT-B/16 at 256 px, BERT-base, queue 65,536, batch 64 per GPU
    "paper": ("pretrain_4m", ["model.vision_pretrained=null", "model.text_pretrained=null"], 64),
}


# Where the runs go (--device); CPU unless told otherwise.
DEVICE = torch.device("cpu")


def synchronize() -> None:
    """Waits for queued GPU work, so that wall-clock times measure it (a no-op on the CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def matmul_flops_per_s(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Dense square matmul throughput on ``DEVICE`` (the denominator of MFU), best of ``repeats``."""
    size = size * 4 if DEVICE.type == "cuda" else size  # a GPU needs a larger matmul to reach its peak
    a, b = (torch.randn(size, size, dtype=dtype, device=DEVICE) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        a @ b
        synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def build(config_name: str, overrides: list[str], objective: str, batch: int | None = None, compile: bool = False):
    from tcl.config import load_config
    from tcl.engine.optim import build_optimizer
    from tcl.models import TCLPretrainModel

    path, base_overrides, default_batch = CONFIGS[config_name]
    batch = batch or default_batch
    config = load_config(path, [*base_overrides, f"loss.objective={objective}", f"train.batch_size={batch}",
                                *overrides], world_size=1)
    vocab = config.model.vocab_size or 1000
    torch.manual_seed(0)
    model = TCLPretrainModel(config.model, config.loss, vocab).train().to(DEVICE)
    optimizer = build_optimizer(model, config.train)
    if compile:
        model = torch.compile(model)
    size, length = config.model.image_size, config.model.max_text_len
    args = tuple(t.to(DEVICE) for t in (torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size),
                                        torch.randint(5, vocab, (batch, length)),
                                        torch.ones(batch, length, dtype=torch.long)))
    return model, optimizer, (args, box_inputs(config, batch, vocab)), batch


def box_inputs(config, batch: int, vocab: int, objects: int = 4) -> dict:
    """Random phrases, boxes and labels for the terms that read instances files (grounding, region
    classification), when they are on: ``objects`` per image, as the generated world has at most."""
    kwargs, loss = {}, config.loss
    boxes = torch.rand(batch, objects, 4) * 0.3 + 0.2
    if loss.grounding_weight > 0:
        phrases = torch.randint(5, vocab, (batch, 4))
        named = loss.grounding_objects  # the objects each phrase names, in order
        kwargs["grounding"] = {"input_ids": phrases, "attention_mask": torch.ones_like(phrases),
                               "boxes": boxes[:, :named], "valid": torch.ones(batch, named, dtype=torch.bool)}
    if loss.region_class_weight > 0:
        sizes = [len(loss.region_categories), *(len(words) for words in loss.region_attributes)]
        labels = torch.stack([torch.randint(0, n, (batch, objects)) for n in sizes], dim=-1)
        kwargs["regions"] = {"boxes": boxes, "labels": labels}
    return {name: {key: value.to(DEVICE) for key, value in part.items()} for name, part in kwargs.items()}


def train_step(model, optimizer, inputs, bf16: bool) -> None:
    autocast = torch.autocast(DEVICE.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        args, kwargs = inputs
        loss = model(*args, alpha=0.4, **kwargs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def count_flops(model, optimizer, inputs, bf16: bool) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        train_step(model, optimizer, inputs, bf16)
    return float(counter.get_total_flops())


def peak_memory_mb() -> float:
    """Peak GPU memory allocated (on a GPU), or the process's peak resident memory (on the CPU)."""
    if DEVICE.type == "cuda":
        return torch.cuda.max_memory_allocated(DEVICE) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def bench(config_name: str, objective: str, bf16: bool, steps: int, warmup: int, peak: dict,
          batch: int | None = None, compile: bool = False) -> dict:
    model, optimizer, inputs, batch = build(config_name, [], objective, batch, compile)
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEVICE)
    for _ in range(warmup):
        train_step(model, optimizer, inputs, bf16)
    times = []
    for _ in range(steps):
        synchronize()
        start = time.perf_counter()
        train_step(model, optimizer, inputs, bf16)
        synchronize()
        times.append(time.perf_counter() - start)
    flops = count_flops(model, optimizer, inputs, bf16)
    median = statistics.median(times)
    dtype = "bf16" if bf16 else "fp32"
    achieved = flops / median
    return {"config": config_name, "objective": objective, "dtype": dtype, "device": str(DEVICE),
            "compiled": compile, "batch": batch, "steps": steps,
            "median_step_s": median, "samples_per_s": batch / median, "flops_per_step": flops,
            "achieved_flops_per_s": achieved, "matmul_flops_per_s": peak[dtype], "mfu": achieved / peak[dtype],
            "peak_rss_mb": peak_memory_mb()}


def machine() -> dict:
    info = {"platform": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": str(DEVICE)}
    if DEVICE.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(DEVICE)
    return info


def ab_arms(pairs: list[str]) -> dict[str, list[str]]:
    """``KEY=A:B`` settings → arm name → overrides: the baseline (every A), one arm per B, and all B together."""
    parsed = []
    for pair in pairs:
        key, _, values = pair.partition("=")
        a, sep, b = values.partition(":")
        if not key or not sep:
            raise SystemExit(f"--ab {pair}: expected KEY=A:B, e.g. train.fused_adamw=false:true")
        parsed.append((key, a, b))
    baseline = [f"{key}={a}" for key, a, _ in parsed]
    arms = {"A (" + " ".join(baseline) + ")": baseline}
    for i, (key, _, b) in enumerate(parsed):
        arms[f"{key}={b}"] = [*baseline[:i], f"{key}={b}", *baseline[i + 1:]]
    if len(parsed) > 1:
        arms["all B"] = [f"{key}={b}" for key, _, b in parsed]
    return arms


def bench_ab(config_name: str, pairs: list[str], steps: int, warmup: int) -> list[dict]:
    """Median step time of each arm of ``ab_arms``, the arms' steps interleaved, and its ratio to the baseline."""
    arms = ab_arms(pairs)
    built = {name: build(config_name, overrides, "infonce") for name, overrides in arms.items()}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for round_index in range(warmup + steps):
        for name, (model, optimizer, inputs, _) in built.items():
            synchronize()
            start = time.perf_counter()
            train_step(model, optimizer, inputs, False)
            synchronize()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    baseline = statistics.median(next(iter(times.values())))
    return [{"arm": name, "overrides": arms[name], "median_step_s": statistics.median(values),
             "ratio_to_a": statistics.median(values) / baseline, "steps": steps} for name, values in times.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "base"], choices=sorted(CONFIGS))
    # bf16 is opt-in: CPUs without AVX-512 BF16 / AMX (e.g. this project's AVX2 machines) run bf16 matmuls through a
    # slow fallback, tens of times slower than fp32; the matmul peak printed first shows which case a machine is.
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-objectives", action="store_true", help="skip the objective-overhead part")
    parser.add_argument("--json", default="benchmarks/results/bench_train.json")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (bf16 autocast on that device)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 32 tiny, 4 base)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (slower to start)")
    parser.add_argument("--ab", nargs="+", default=None, metavar="KEY=A:B",
                        help="compare settings in one process, their steps interleaved (first of --configs)")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device is visible to PyTorch here")
    if args.ab:
        return run_ab(args, argv)
    peak = {"fp32": matmul_flops_per_s(torch.float32)}
    if "bf16" in args.dtypes:
        peak["bf16"] = matmul_flops_per_s(torch.bfloat16, size=1024, repeats=3)
    print("dense matmul peak: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peak.items()), flush=True)
    runs = [bench(name, "infonce", dtype == "bf16", args.steps, args.warmup, peak, args.batch, args.compile)
            for name in args.configs for dtype in args.dtypes]
    rows = [f"| {r['config']} | {r['dtype']} | {r['batch']} | {r['median_step_s']:.3f} s | {r['samples_per_s']:.1f} | "
            f"{r['flops_per_step'] / 1e9:.1f} GFLOP | {r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s | "
            f"{r['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s | {100 * r['mfu']:.1f} % | {r['peak_rss_mb']:.0f} MB |"
            for r in runs]
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(["python benchmarks/bench_train.py", *(argv if argv is not None else sys.argv[1:])]),
              "matmul_flops_per_s": peak, "runs": runs}
    if not args.no_objectives:
        dtype = "bf16" if "bf16" in args.dtypes else "fp32"
        objectives = [bench("base", objective, dtype == "bf16", args.steps, args.warmup, peak)
                      for objective in ("infonce", "debiased_neg", "debiased_pos")]
        reference = objectives[0]["median_step_s"]
        for run in objectives:
            run["overhead_vs_infonce"] = run["median_step_s"] / reference - 1.0
            rows.append(f"| base, queue 65,536, {run['objective']} | {dtype} | {run['batch']} | "
                        f"{run['median_step_s']:.3f} s | overhead vs InfoNCE {100 * run['overhead_vs_infonce']:+.1f} % |")
        result["objectives"] = objectives
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("| config | dtype | batch | median step | samples/s | FLOPs/step | achieved | matmul peak | MFU | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"wrote {out}")
    return 0


def run_ab(args: argparse.Namespace, argv: list[str] | None) -> int:
    arms = bench_ab(args.configs[0], args.ab, args.steps, args.warmup)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "config": args.configs[0],
              "command": " ".join(["python benchmarks/bench_train.py", *(argv if argv is not None else sys.argv[1:])]),
              "arms": arms}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"| arm ({args.configs[0]}, {args.steps} interleaved steps each) | median step | ratio to A |\n|---|---|---|")
    for arm in arms:
        print(f"| {arm['arm']} | {1000 * arm['median_step_s']:.0f} ms | {arm['ratio_to_a']:.3f} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
