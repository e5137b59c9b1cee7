"""The "blind" baseline: the best answer prior that reads the question only.

A model that looks at the image must beat this by far; on the generated data the answers are balanced within each
question family precisely so that it cannot.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from tcl.text_cleaning import pre_question


class QuestionOnlyPrior:
    """Predicts the most frequent training answer for the same question text, then question type, then overall."""

    def __init__(self, questions: list[dict[str, Any]], annotations: list[dict[str, Any]]):
        by_id = {q["question_id"]: q["question"] for q in questions}
        per_question: dict[str, Counter] = defaultdict(Counter)
        per_type: dict[str, Counter] = defaultdict(Counter)
        overall: Counter = Counter()
        for ann in annotations:
            answer = ann["multiple_choice_answer"]
            per_question[pre_question(by_id[ann["question_id"]])][answer] += 1
            per_type[ann["question_type"]][answer] += 1
            overall[answer] += 1
        self.per_question = {q: c.most_common(1)[0][0] for q, c in per_question.items()}
        self.per_type = {t: c.most_common(1)[0][0] for t, c in per_type.items()}
        self.default = overall.most_common(1)[0][0] if overall else ""

    def predict(self, question: str, question_type: str | None = None) -> str:
        answer = self.per_question.get(pre_question(question))
        if answer is None:
            answer = self.per_type.get(question_type or "", self.default)
        return answer


def blind_scores(train_questions: list[dict[str, Any]], train_annotations: list[dict[str, Any]],
                 eval_questions: list[dict[str, Any]], eval_annotations: list[dict[str, Any]]) -> dict[str, Any]:
    """The question-only prior's official VQA accuracy (percent) on the eval split: ``overall`` and
    ``per_answer_type`` (yes/no, number, other)."""
    from tcl.evaluation.vqa_metric import vqa_accuracy

    prior = QuestionOnlyPrior(train_questions, train_annotations)
    text = {q["question_id"]: q["question"] for q in eval_questions}
    by_type: dict[str, list[float]] = {}
    for a in eval_annotations:
        score = vqa_accuracy(prior.predict(text[a["question_id"]], a["question_type"]), [x["answer"] for x in a["answers"]])
        by_type.setdefault(a["answer_type"], []).append(score)
    every = [score for scores in by_type.values() for score in scores]
    return {"overall": 100.0 * sum(every) / max(len(every), 1),
            "per_answer_type": {t: 100.0 * sum(v) / len(v) for t, v in sorted(by_type.items())}}
