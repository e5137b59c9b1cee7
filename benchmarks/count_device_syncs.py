"""How often the training step makes the host wait for the GPU, counted by CUDA's sync debug mode.

    python benchmarks/count_device_syncs.py --device cuda --json sync.json      # what benchmarks/gpu_check.sh runs

Runs ``tcl pretrain`` in this process (the tiny model on the generated set of ``bench_train_loop.py``, in bf16 on
a GPU) with ``torch.cuda.set_sync_debug_mode("warn")``: torch then warns at every call that synchronises with the
device, whoever makes it (torch, accelerate or us). The warnings raised inside the training step (forward, backward,
optimizer step, the log line: ``Trainer._micro_step`` and ``Trainer._check_in``) are counted, with the places they
come from; data loading, checkpoints and evaluation are outside. The goal is at most one per log interval.
On the CPU the mode does nothing and the count is 0 (``tests/test_host_syncs.py`` counts our own calls there).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--out", default=str(REPO / "runs/count_device_syncs"))
    parser.add_argument("--data", default=str(REPO / "data/bench_tiny"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to PyTorch here")
    from tcl.engine.commands import pretrain
    from tcl.engine.trainer import Trainer

    spec = importlib.util.spec_from_file_location("bench_train_loop", REPO / "benchmarks/bench_train_loop.py")
    loop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loop)
    data = loop.make_data(Path(args.data), loop.SIZES["tiny"]["images"])
    places: collections.Counter = collections.Counter()
    for name in ("_micro_step", "_check_in"):
        setattr(Trainer, name, counted(getattr(Trainer, name), places))
    if args.device == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
    precision = "bf16" if args.device == "cuda" and torch.cuda.is_bf16_supported() else "no"
    pretrain(["--config", str(REPO / loop.SIZES["tiny"]["config"]),
                   *loop.loop_overrides("tiny", data, loop.SIZES["tiny"]["batch"], 2),
                   f"train.output_dir={args.out}", f"train.max_steps={args.steps}", f"train.log_every={args.log_every}",
                   f"train.mixed_precision={precision}", "train.epochs=1000", "--overwrite"])
    if args.device == "cuda":
        torch.cuda.set_sync_debug_mode("default")
    total = sum(places.values())
    result = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "steps": args.steps,
              "log_every": args.log_every, "syncs_in_steps": total,
              "syncs_per_log_interval": total / max(1, args.steps // args.log_every),
              "places": dict(places.most_common(20))}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def counted(method, places: collections.Counter):
    """``method`` with the synchronisation warnings raised inside it counted by where they come from."""
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = method(*args, **kwargs)
        for warning in caught:
            if "synchroniz" in str(warning.message):
                places[f"{warning.filename}:{warning.lineno}"] += 1
            else:
                warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
        return result
    return wrapper


if __name__ == "__main__":
    sys.exit(main())
