"""VQA evaluation: predictions, the EvalAI results file, and the official accuracy when annotations exist.

    python scripts/evaluate_vqa.py --run runs/vqa_tiny [--blind] [--split val2014] [--max-questions N]
    tcl evaluate-vqa --run runs/vqa_tiny

Writes ``vqa_results_<split>[_blind].json`` (``[{"question_id", "answer"}]``, de-duplicated across processes; for a
split without annotations it must cover every question of the questions file) and, with annotations,
``vqa_scores_<split>[_blind].json``: overall, per answer type and per question type official accuracy and the
"hit" rate. ``--blind`` replaces every image by the same constant image, measuring what the question alone gives.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tcl.atomic import write_json_atomic
from tcl.config import Config
from tcl.data.builders import build_loader, build_vqa_dataset, vqa_collator
from tcl.json_io import load_json
from tcl.data.vqa import official_paths
from tcl.evaluation.answers import AnswerVocabulary
from tcl.evaluation.results import check_complete, merge_results, vqa_output_tag, write_results
from tcl.evaluation.vqa_metric import VQAScores, score_results
from tcl.inference.answering import AnswerPredictor
from tcl.inference.runs import load_vqa_run

logger = logging.getLogger("tcl.evaluate_vqa")


def run(args: argparse.Namespace) -> int:
    from tcl.engine.runtime import build_accelerator

    run_dir = Path(args.run)
    overrides = [f"data.vqa_eval={args.split}"] if args.split else []
    if args.max_questions is not None:
        overrides.append(f"eval.max_questions={args.max_questions}")
    config, model, tokenizer, vocabulary = load_vqa_run(run_dir, overrides)
    accelerator = build_accelerator(config)
    evaluate_model(config, model.to(accelerator.device), tokenizer, vocabulary, run_dir, accelerator, args.blind)
    return 0


@torch.no_grad()
def predict(predictor: AnswerPredictor, loader, vocabulary: AnswerVocabulary, blind: bool = False,
            show_progress: bool = True) -> list[dict]:
    """Best answers ``[{"question_id", "answer"}]`` for every question the loader yields."""
    predictor.model.eval()
    results = []
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not show_progress):
        image = torch.zeros_like(batch["image"]) if blind else batch["image"]
        scores = predictor.scores(image, batch["input_ids"], batch["attention_mask"], batch["image_index"])
        for question_id, index in zip(batch["question_ids"].tolist(), scores.argmax(dim=1).tolist()):
            results.append({"question_id": question_id, "answer": vocabulary.answers[index]})
    return results


def evaluate_model(config: Config, model, tokenizer, vocabulary: AnswerVocabulary, output_dir: Path, accelerator,
                   blind: bool = False) -> VQAScores | None:
    """Predicts ``data.vqa_eval`` on every process, merges, writes the results file and, with annotations, scores."""
    dataset = build_vqa_dataset(config, train=False)
    if config.eval.max_questions is not None and config.eval.max_questions < len(dataset):
        dataset.table = dataset.table.select(range(config.eval.max_questions))
    loader = build_loader(dataset, vqa_collator(config, tokenizer, train=False), config.eval.batch_size,
                          shuffle=False, num_workers=config.data.num_workers, drop_last=False,
                          rank=accelerator.process_index, world_size=accelerator.num_processes)
    predictor = AnswerPredictor.from_config(config, model, tokenizer, vocabulary)
    mine = predict(predictor, loader, vocabulary, blind, accelerator.is_main_process)
    parts = _gather_lists(mine, accelerator)
    if not accelerator.is_main_process:
        return None
    results = merge_results(parts)
    split = config.data.vqa_eval
    tag = vqa_output_tag(split, blind, config.eval.max_questions)
    write_results(results, output_dir / f"vqa_results_{tag}.json")
    print(f"wrote {output_dir / f'vqa_results_{tag}.json'} ({len(results):,} answers)")
    questions_path, annotations_path = _split_files(config)
    if annotations_path is None:
        if questions_path is not None and config.eval.max_questions is None:
            check_complete(results, questions_path)
        logger.info("%s has no annotations: wrote the results file for EvalAI only", split)
        return None
    scores = _score(results, annotations_path)
    write_json_atomic(dataclasses.asdict(scores), output_dir / f"vqa_scores_{tag}.json", indent=2)
    print(format_scores(scores, f"{split}{' (blind)' if blind else ''}"))
    print(f"wrote {output_dir / f'vqa_scores_{tag}.json'} (overall, per answer type, per question type"
          f"{' and per question family' if scores.per_family else ''})")
    return scores


def _split_files(config: Config) -> tuple[Path | None, Path | None]:
    if config.data.vqa_source != "official":
        return None, None
    return official_paths(config.data.root, config.data.vqa_eval)


def _score(results: list[dict], annotations_path: Path) -> VQAScores:
    predicted = {r["question_id"]: r["answer"] for r in results}
    annotations = [a for a in load_json(annotations_path)["annotations"] if a["question_id"] in predicted]
    return score_results(predicted, annotations)


def _gather_lists(items: list[dict], accelerator) -> list[list[dict]]:
    if accelerator.num_processes == 1:
        return [items]
    from accelerate.utils import gather_object

    return [gather_object(items)]


def format_scores(scores: VQAScores, title: str) -> str:
    lines = [f"VQA accuracy on {title} ({scores.num_questions} questions): {scores.overall:.2f} %  "
             f"(hit rate {scores.hit_rate:.2f} %)"]
    lines += [f"  {answer_type:<8} {value:6.2f} %" for answer_type, value in scores.per_answer_type.items()]
    if scores.per_family:
        lines.append("  per question family: " + ", ".join(f"{family} {value:.2f} %"
                                                           for family, value in scores.per_family.items()))
    return "\n".join(lines)

