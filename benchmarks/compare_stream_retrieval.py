"""Does pretraining learn as well from streamed shards as from files? The tiny recipe on the embedded world, from
its COCO files and from the same pairs as streamed tar shards (``tcl make-shards``, ``data.pretrain_source:
webdataset``), over several seeds: zero-shot retrieval R@1 and ITM accuracy of the final evaluation. Two shard
arms: shards written in a seeded random order (make-shards' default) and in the source's order (``--keep-order``:
an image's five captions adjacent, so a stream's shuffle buffer holds them together).

    taskset -c 0,1 python benchmarks/compare_stream_retrieval.py --seeds 0 1 2 \\
        --json benchmarks/results/stream_retrieval.json

The region classification and grounding terms read COCO boxes, which shards do not carry, so both arms run without
them (``loss.region_class_weight=0 loss.grounding_weight=0``); everything else is ``configs/pretrain_tiny.yaml``.
Runs already in the JSON are kept (the script resumes); data: ``data/shapes`` (``tcl make-data``), shards written beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = ("i2t_r1", "t2i_r1", "itm_accuracy")


# Arm → the folder of its shards and tcl make-shards' extra arguments (None: the COCO files themselves).
ARMS = {"files": None, "streamed": ("shards_bench_shuffled", []),
        "streamed_ordered": ("shards_bench", ["--keep-order"])}


def shards(root: Path, folder: str, extra: list[str]) -> list[str]:
    """The overrides that stream the world's pairs from shards of 500 (written once)."""
    out = root / folder
    if not (out / "shards.json").is_file():
        subprocess.run([sys.executable, "-m", "tcl", "make-shards", "configs/pretrain_tiny.yaml", f"data.root={root}",
                        "--out", str(out), "--samples-per-shard", "500", "--quiet", *extra], cwd=REPO, check=True)
    count = len(json.loads((out / "shards.json").read_text())["shards"])
    return ["data.pretrain_source=webdataset", f'data.pretrain_files=["{out.name}/{{00000..{count - 1:05d}}}.tar"]']


def run(arm: str, seed: int, root: Path, runs: Path) -> dict[str, float]:
    out = runs / f"{arm}_seed{seed}"
    extra = shards(root, *ARMS[arm]) if ARMS[arm] else []
    command = [sys.executable, "scripts/pretrain.py", "--config", "configs/pretrain_tiny.yaml", f"data.root={root}",
               "loss.region_class_weight=0", "loss.grounding_weight=0", f"train.seed={seed}",
               f"train.output_dir={out}", "--overwrite", *extra]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = next(out.glob("retrieval_*.json"))
    numbers = json.loads(result.read_text())
    return {name: numbers[name] for name in METRICS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--root", type=Path, default=REPO / "data/shapes")
    parser.add_argument("--runs", type=Path, default=REPO / "runs/stream_retrieval")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks/results/stream_retrieval.json")
    args = parser.parse_args(argv)
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    for seed in args.seeds:
        for arm in args.arms:
            key = f"{arm}/{seed}"
            if key not in results:
                results[key] = run(arm, seed, args.root.resolve(), args.runs.resolve())
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=2))
            print(key, results[key], flush=True)
    print("| arm | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS))
    for arm in args.arms:
        rows = [results[f"{arm}/{seed}"] for seed in args.seeds]
        cells = [f"{statistics.mean(r[m] for r in rows):.1f} ({', '.join(f'{r[m]:.1f}' for r in rows)})"
                 for m in METRICS]
        print(f"| {arm} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
