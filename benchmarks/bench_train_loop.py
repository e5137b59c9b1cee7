"""The real training loop's speed: samples/s, MFU, peak memory and the largest batch, per precision and setting.

    python benchmarks/bench_train_loop.py --size tiny                            # CPU, a few steps (what CI runs)
    python benchmarks/bench_train_loop.py --size paper --device cuda \\
        --runs fp32 bf16 bf16+checkpointing bf16+compile --json benchmarks/results/train_loop_h100.json

Each run is ``tcl pretrain`` itself in a fresh process (``accelerate launch`` with one process per GPU when there are
several: DDP), on a generated set of JPEG photographs-like images and captions in the ALBEF JSON layout
(``data.pretrain_source: albef_json``, decoded and augmented by the real loader with ``--workers`` workers), with
evaluation off and the checkpoint written only after the last step. The loop's own log lines give the throughput:
samples/s over the steps after the first log interval (warm-up, compilation), and the peak memory of the process.

``paper`` is TCL's pretraining size (``configs/pretrain_4m.yaml`` with random weights: ViT-B/16 at 256 px, BERT-base,
queue 65,536, batch 64 per GPU); ``tiny`` is the embedded demo's model. A run is named by its precision and its
settings joined with ``+``: ``fp32``, ``bf16``, ``bf16+checkpointing`` (``train.grad_checkpointing``),
``bf16+compile`` (``train.compile``). MFU = samples/s × model FLOPs per sample (torch's FLOP counter over one
forward and backward of the model, ``benchmarks/bench_train.py``) ÷ the dense matmul FLOP/s of that dtype measured on
the same device. ``--largest-batch`` also finds the largest batch per device whose model step fits in memory, in the
first run's precision (the batch grows by half until it runs out). ``--loader`` also times the loader alone (the same dataset, transforms,
collation and workers, no model) over as many batches: were it slower than the loop, it would be the bottleneck.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SIZES = {
    "tiny": {"config": "configs/pretrain_tiny.yaml", "model": "tiny", "batch": 8, "images": 64,
             "overrides": ["model.queue_size=64", "loss.region_class_weight=0", "loss.grounding_weight=0",
                           "loss.swap_word_classes=[]", "loss.mlm_content_probability=0"]},
    "paper": {"config": "configs/pretrain_4m.yaml", "model": "paper", "batch": 64, "images": 1024,
              "overrides": ["model.vision_pretrained=null", "model.text_pretrained=null"]},
}
SETTINGS = {"checkpointing": "train.grad_checkpointing=true", "compile": "train.compile=true"}
PRECISIONS = {"fp32": "no", "bf16": "bf16"}
WORDS = ("a man woman dog cat red blue green small large table street car tree sitting standing on in near with "
         "the of two three white black holding riding plate food water field building sky").split()


def load_bench_train():
    """``benchmarks/bench_train.py`` as a module: its model step, FLOP counter and matmul peak."""
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "benchmarks/bench_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_data(folder: Path, images: int, seed: int = 0) -> Path:
    """``images`` 640 × 480 JPEGs of smooth random colour fields (decoding costs what a photograph of that size
    costs), two captions each, in ``pairs.json``, and a WordPiece tokenizer of the captions; made once."""
    from tcl.data.tokenizer import build_wordpiece_tokenizer

    listing = folder / "pairs.json"
    if listing.is_file() and len(json.loads(listing.read_text())) == 2 * images:
        return folder
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(images):
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        photo = Image.fromarray(coarse).resize((640, 480), Image.BICUBIC)
        noise = rng.normal(0, 12, (480, 640, 3))
        photo = Image.fromarray(np.clip(np.asarray(photo) + noise, 0, 255).astype(np.uint8))
        name = f"images/{index:06d}.jpg"
        photo.save(folder / name, quality=90)
        for _ in range(2):
            pairs.append({"image": name, "caption": " ".join(rng.choice(WORDS, rng.integers(8, 20)))})
    build_wordpiece_tokenizer([pair["caption"] for pair in pairs], folder / "tokenizer")
    listing.write_text(json.dumps(pairs))
    return folder


def loop_overrides(size: str, data: Path, batch: int, workers: int) -> list[str]:
    """The size's config on the generated set, evaluation off."""
    return [*SIZES[size]["overrides"], f"data.root={data}", f"data.tokenizer={data / 'tokenizer'}",
            "data.pretrain_source=albef_json", "data.pretrain_files=[pairs.json]", "data.pretrain_instances=[]",
            "eval.retrieval_file=null", f"train.batch_size={batch}", f"data.num_workers={workers}"]


def run_loop(name: str, size: str, data: Path, out: Path, steps: int, log_every: int, workers: int,
             devices: int, batch: int) -> dict:
    """One ``tcl pretrain`` run (name: precision[+setting...]); its samples/s and peak memory."""
    precision, *settings = name.split("+")
    overrides = [*loop_overrides(size, data, batch, workers), f"train.output_dir={out / name}",
                 f"train.max_steps={steps}", f"train.log_every={log_every}", "train.save_every=null",
                 f"train.mixed_precision={PRECISIONS[precision]}", "train.epochs=1000",
                 *(SETTINGS[setting] for setting in settings)]
    command = ["-m", "tcl", "pretrain", "--config", str(REPO / SIZES[size]["config"]), *overrides, "--overwrite"]
    if devices > 1:
        command = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(devices), *command]
    started = time.perf_counter()
    subprocess.run([sys.executable, *command], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"})
    lines = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    timed = [line for line in lines if "samples_per_s" in line][1:]  # the first interval holds the warm-up
    if not timed:
        raise SystemExit(f"{name}: fewer than two log intervals; raise --steps above 2 × --log-every")
    return {"run": name, "precision": precision, "settings": settings, "devices": devices, "batch_per_device": batch,
            "steps": steps, "samples_per_s": statistics.median(line["samples_per_s"] for line in timed),
            "peak_memory_mb": max(line.get("peak_memory_mb", 0.0) for line in lines),
            "wall_s": time.perf_counter() - started}


def loader_throughput(size: str, data: Path, batch: int, workers: int, batches: int) -> dict:
    """Samples/s of the training loader alone (one process's), over ``batches`` batches after the first."""
    from tcl.config import load_config
    from tcl.data.builders import build_loader, build_pretrain_dataset, build_tokenizer, pretrain_collator

    config = load_config(REPO / SIZES[size]["config"], loop_overrides(size, data, batch, workers))
    loader = build_loader(build_pretrain_dataset(config), pretrain_collator(config, build_tokenizer(config)), batch,
                          shuffle=True, num_workers=workers, drop_last=True)
    loader.sampler.set_epoch(0)
    iterator = iter(loader)
    next(iterator)  # workers start
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            seen += len(next(iterator)["input_ids"])
        except StopIteration:
            loader.sampler.set_epoch(1)
            iterator = iter(loader)
    return {"loader_samples_per_s": seen / (time.perf_counter() - start), "loader_workers": workers,
            "loader_batches": batches}


def model_numbers(size: str, device: str, precisions: list[str], largest: bool) -> dict:
    """FLOPs per sample of the model step, the matmul peak of each precision, and (``largest``) the largest batch
    per device whose step fits in the first precision, each from an in-process model on ``device``."""
    bench = load_bench_train()
    bench.DEVICE = torch.device(device)
    model, optimizer, inputs, batch = bench.build(SIZES[size]["model"], SIZES[size]["overrides"], "infonce", batch=2)
    numbers: dict = {"flops_per_sample": bench.count_flops(model, optimizer, inputs, False) / batch,
                     "matmul_flops_per_s": {}, "largest_batch": {}}
    del model, optimizer, inputs
    for precision in precisions:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        numbers["matmul_flops_per_s"][precision] = bench.matmul_flops_per_s(dtype)
    if largest:
        numbers["largest_batch"][precisions[0]] = largest_batch(bench, size, precisions[0] == "bf16")
    return numbers


def largest_batch(bench, size: str, bf16: bool) -> int:
    """The batch grows by half from the recipe's until a model step runs out of memory; the last one that ran."""
    fits, batch = 0, SIZES[size]["batch"]
    while batch <= 4096:
        try:
            model, optimizer, inputs, _ = bench.build(SIZES[size]["model"], SIZES[size]["overrides"], "infonce",
                                                      batch=batch)
            bench.train_step(model, optimizer, inputs, bf16)
            bench.synchronize()
        except torch.OutOfMemoryError:
            break
        finally:
            model = optimizer = inputs = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        fits, batch = batch, batch + batch // 2
    return fits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--runs", nargs="+", default=["fp32"],
                        help="precision[+checkpointing][+compile] ... (default fp32)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (all visible GPUs, one process each)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 6 tiny, 30 paper)")
    parser.add_argument("--log-every", type=int, default=None, help="log interval (default steps / 3)")
    parser.add_argument("--batch", type=int, default=None, help="batch per device (default: the size's recipe)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers per process (default: CPUs / "
                                                                  "processes, at most 14)")
    parser.add_argument("--data", default=None, help="where the generated set goes (default data/bench_<size>)")
    parser.add_argument("--out", default=None, help="run folders (default runs/bench_train_loop)")
    parser.add_argument("--largest-batch", action="store_true", help="also find the largest batch that fits")
    parser.add_argument("--loader", action="store_true", help="also time the loader alone")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    for name in args.runs:
        precision, *settings = name.split("+")
        if precision not in PRECISIONS or any(setting not in SETTINGS for setting in settings):
            parser.error(f"--runs {name}: expected fp32 or bf16, then any of +{' +'.join(SETTINGS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is visible to PyTorch here")
    devices = torch.cuda.device_count() if args.device.startswith("cuda") else 1
    steps = args.steps or (30 if args.size == "paper" else 6)
    log_every = args.log_every or max(1, steps // 3)
    workers = args.workers if args.workers is not None else min(14, max(1, (os.cpu_count() or 2) // devices - 1))
    data = make_data(Path(args.data or REPO / f"data/bench_{args.size}"), SIZES[args.size]["images"])
    out = Path(args.out or REPO / "runs/bench_train_loop")
    batch = args.batch or SIZES[args.size]["batch"]
    runs = [run_loop(name, args.size, data, out, steps, log_every, workers, devices, batch) for name in args.runs]
    loader = loader_throughput(args.size, data, batch, workers, steps) if args.loader else {}
    model = model_numbers(args.size, "cuda" if devices and args.device.startswith("cuda") else "cpu",
                          list(dict.fromkeys(run["precision"] for run in runs)), args.largest_batch)
    for run in runs:
        achieved = run["samples_per_s"] * model["flops_per_sample"]
        run["mfu"] = achieved / (model["matmul_flops_per_s"][run["precision"]] * devices)
    result = {"machine": machine(args.device), "date": time.strftime("%Y-%m-%d"), "size": args.size,
              "command": " ".join(["python benchmarks/bench_train_loop.py", *(argv or sys.argv[1:])]),
              "workers_per_process": workers, **model, **loader, "runs": runs}
    print("| run | batch/device | devices | samples/s | MFU | peak memory |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        print(f"| {run['run']} | {run['batch_per_device']} | {run['devices']} | {run['samples_per_s']:.1f} | "
              f"{100 * run['mfu']:.1f} % | {run['peak_memory_mb']:.0f} MB |")
    if loader:
        print(f"loader alone: {loader['loader_samples_per_s']:.1f} samples/s per process ({workers} workers)")
    if model["largest_batch"]:
        print("largest batch per device: " + ", ".join(f"{k} {v}" for k, v in model["largest_batch"].items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def machine(device: str) -> dict:
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    return info


if __name__ == "__main__":
    sys.exit(main())
