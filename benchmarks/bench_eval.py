"""Evaluation benchmarks: the official VQA accuracy over many predictions, and VQA inference throughput.

    python benchmarks/bench_eval.py                                   # metric on 1,000,000 questions + inference
    python benchmarks/bench_eval.py --metric-only --questions 200000 --json results.json

Metric part: generates ``--questions`` annotation records with ten human answers drawn from realistic messy strings
(case, punctuation, articles, number words, contractions, synonyms) and one prediction each, times
``tcl.evaluation.vqa_metric.score_results`` end to end, and checks that its overall accuracy equals the mean of the
per-question ``vqa_accuracy`` exactly (a fresh normalisation cache for the timed run). Inference part: questions/s of
the tiny and base VQA models (random weights) with both heads, on the device present.
Writes a JSON file and prints one markdown row per measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

from tcl.evaluation import vqa_metric

REPO = Path(__file__).resolve().parents[1]
# (canonical answer, messy variants humans and models actually produce)
ANSWER_POOL = [
    ("yes", ["yes", "Yes", "yes.", "YES", "yes!", "yeah", " yes"]),
    ("no", ["no", "No", "no.", "nope", "NO", "no!"]),
    ("2", ["2", "two", "Two", "2.", "two.", "2 "]),
    ("10", ["10", "ten", "10.", "Ten"]),
    ("0", ["0", "none", "zero", "None"]),
    ("red", ["red", "Red", "red.", "the red", "red color", "reddish"]),
    ("white and black", ["white and black", "black and white", "white, black", "White and Black"]),
    ("tennis racket", ["tennis racket", "tennis racquet", "a tennis racket", "racket"]),
    ("don't know", ["don't know", "dont know", "do not know", "not sure"]),
    ("x-ray", ["x-ray", "x ray", "xray", "X-ray"]),
    ("3.5", ["3.5", "3.50", "three and half", "3,5"]),
    ("1,000", ["1,000", "1000", "one thousand", "1.000"]),
    ("man's hat", ["man's hat", "mans hat", "hat", "the man's hat"]),
    ("10:30", ["10:30", "10:30.", "ten thirty", "10 30"]),
    ("frisbee", ["frisbee", "Frisbee", "frisbee.", "a frisbee", "disc"]),
]
ANSWER_TYPES = ("yes/no", "number", "other")


def make_records(count: int, seed: int) -> tuple[dict[int, str], list[dict]]:
    rng = random.Random(seed)
    predictions, annotations = {}, []
    for question_id in range(count):
        canonical, variants = ANSWER_POOL[rng.randrange(len(ANSWER_POOL))]
        agreement = rng.random()
        humans = []
        for slot in range(10):
            if rng.random() < agreement:
                text = variants[0] if rng.random() < 0.6 else rng.choice(variants)
            else:
                text = rng.choice(rng.choice(ANSWER_POOL)[1])
            humans.append({"answer": text, "answer_confidence": "yes", "answer_id": slot + 1})
        guess = rng.choice(variants) if rng.random() < 0.6 else rng.choice(rng.choice(ANSWER_POOL)[1])
        predictions[question_id] = guess
        annotations.append({"question_id": question_id, "question_type": f"type {question_id % 40}",
                            "answer_type": ANSWER_TYPES[question_id % 3], "answers": humans})
    return predictions, annotations


def bench_metric(count: int, seed: int = 0) -> dict:
    predictions, annotations = make_records(count, seed)
    vqa_metric.normalize_answer.cache_clear()
    vqa_metric._forms.cache_clear()
    start = time.perf_counter()
    scores = vqa_metric.score_results(predictions, annotations, ndigits=None)
    seconds = time.perf_counter() - start
    reference = sum(vqa_metric.vqa_accuracy(predictions[a["question_id"]], [h["answer"] for h in a["answers"]])
                    for a in annotations) / len(annotations) * 100.0
    if abs(reference - scores.overall) > 1e-9:
        raise SystemExit(f"score_results ({scores.overall}) differs from the per-question function ({reference})")
    return {"name": "official VQA accuracy (score_results)", "questions": count, "seconds": seconds,
            "metric_questions_per_s": count / seconds, "overall_accuracy": scores.overall,
            "identical_to_per_question": True}


def bench_inference(name: str, overrides: list[str], head: str, batch: int, steps: int, k_test: int) -> dict:
    from tcl.config import load_config
    from tcl.models.vqa import TCLVQAModel

    config = load_config(REPO / name, [f"vqa.head={head}", *overrides])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vocab, answers = config.model.vocab_size or 1000, 3128 if "vqa.yaml" in name else 22
    torch.manual_seed(0)
    model = TCLVQAModel(config.model, vocab, answers, head=head).to(device).eval()
    size = config.model.image_size
    image = torch.randn(batch, 3, size, size, device=device)
    ids = torch.randint(5, vocab, (batch, 12), device=device)
    mask = torch.ones_like(ids)
    candidates = None
    if head == "decoder":
        cand = torch.randint(5, vocab, (answers, 4), device=device)
        cand[:, 0], cand[:, -1] = 2, 3
        candidates = (cand, torch.ones_like(cand))
    with torch.no_grad():
        model.answer_scores(image, ids, mask, candidates, k_test)  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            model.answer_scores(image, ids, mask, candidates, k_test)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {"name": f"VQA inference {Path(name).stem} {head}", "device": device, "batch": batch,
            "k_test": k_test if head == "decoder" else None, "questions_per_s": batch * steps / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=1_000_000)
    parser.add_argument("--metric-only", action="store_true")
    parser.add_argument("--json", default="benchmarks/results/bench_eval.json")
    args = parser.parse_args(argv)
    results = {"machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(),
                           "torch": torch.__version__, "cuda": torch.cuda.is_available()},
               "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python benchmarks/bench_eval.py", *sys.argv[1:]])}
    metric = bench_metric(args.questions)
    results["metric"] = metric
    results["metric_questions_per_s"] = metric["metric_questions_per_s"]
    rows = [f"| {metric['name']} | {args.questions:,} questions | {metric['metric_questions_per_s']:,.0f} q/s | "
            f"identical to vqa_accuracy: yes |"]
    if not args.metric_only:
        runs = [("configs/vqa_tiny.yaml", [], "classifier", 64, 10, 16),
                ("configs/vqa_tiny.yaml", [], "decoder", 64, 10, 16),
                ("configs/vqa.yaml", [], "classifier", 4, 2, 128),
                ("configs/vqa.yaml", [], "decoder", 4, 2, 128)]
        results["inference"] = [bench_inference(*run) for run in runs]
        rows += [f"| {r['name']} | batch {r['batch']}{', k ' + str(r['k_test']) if r['k_test'] else ''} | "
                 f"{r['questions_per_s']:,.1f} q/s | {r['device']} |" for r in results["inference"]]
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print("\n".join(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
