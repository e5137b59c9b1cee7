"""Evaluation: the official VQA accuracy and baselines."""

from tcl.evaluation.vqa_metric import VQAScores, normalize_answer, score_results, vqa_accuracy

__all__ = ["VQAScores", "normalize_answer", "score_results", "vqa_accuracy"]
