"""Start-up times of the command line: how long a user waits for --help, for an error about their arguments, and
for one answer from ``tcl predict``, next to the cost of importing torch.

    python benchmarks/bench_startup.py                      # 5 rounds; a tiny random VQA model saved to a temp folder
    python benchmarks/bench_startup.py --model runs/demo/vqa --rounds 9 --json startup.json

Each round runs every command once in a fresh interpreter, in the same order, so that slow and fast moments of the
machine fall on all of them alike; the table gives the median and the range. Needs the generated data
(``tcl make-data``) for the example image and the tokenizer of the default model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE = "images/val2014/COCO_val2014_000000500001.jpg"  # under the data root


def commands(model: Path, image: Path) -> dict[str, list[str]]:
    tcl = [sys.executable, "-m", "tcl"]
    return {
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "tcl --help": [*tcl, "--help"],
        "tcl pretrain --help": [*tcl, "pretrain", "--help"],
        "tcl pretrain train.max_stepz=1 (a typo)": [*tcl, "pretrain", "train.max_stepz=1"],
        "tcl finetune-vqa --config missing.yaml": [*tcl, "finetune-vqa", "--config", "missing.yaml"],
        "tcl predict (one question, tiny model)": [*tcl, "predict", "--model", str(model), "--image", str(image),
                                                   "--question", "what color is the circle?"],
    }


def tiny_model(folder: Path, data_root: Path) -> Path:
    """A tiny VQA model with random weights and the generated data's tokenizer, saved as ``tcl.load_vqa`` reads it."""
    import torch

    from tcl.config import load_config
    from tcl.data.builders import build_tokenizer
    from tcl.evaluation.answers import AnswerVocabulary
    from tcl.inference.pipeline import VQAPipeline
    from tcl.inference.processor import ImageSettings, TCLProcessor
    from tcl.models.vqa import vqa_model_from_config

    config = load_config(REPO / "configs/vqa_tiny.yaml", [f"data.root={data_root}"])
    tokenizer = build_tokenizer(config)
    torch.manual_seed(0)
    answers = AnswerVocabulary(["yes", "no", "red", "blue", "circle", "square", "1", "2"])
    model = vqa_model_from_config(config, len(tokenizer), len(answers))
    processor = TCLProcessor(tokenizer, ImageSettings(image_size=config.model.image_size), answers)
    VQAPipeline(model, processor, k_test=4).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a saved VQA model for the predict row (default: a tiny one)")
    parser.add_argument("--data-root", default="data/shapes", help="the generated data (default data/shapes)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.data_root).resolve()
        model = Path(args.model) if args.model else tiny_model(Path(scratch) / "model", root)
        table = commands(model, root / IMAGE)
        times: dict[str, list[float]] = {name: [] for name in table}
        for _ in range(args.rounds):
            for name, command in table.items():
                start = time.perf_counter()
                result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
                times[name].append(time.perf_counter() - start)
                if ("help" in name or "predict" in name or "import" in name) and result.returncode != 0:
                    raise SystemExit(f"{name} failed (exit {result.returncode}): {result.stderr[-500:]}")
    print(f"| command ({args.rounds} rounds) | median s | min–max s |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f}–{max(values):.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({name: sorted(values) for name, values in times.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
