"""Answering with either VQA head: scores over the answer list, and the top answers with confidences."""

from __future__ import annotations

import torch

from tcl.evaluation.answers import AnswerVocabulary
from tcl.inference.precision import inference_autocast


class AnswerPredictor:
    """Scores every listed answer for a batch of questions with either head (the decoder ranks the top ``k``).
    ``precision`` is ``fp32`` or ``bf16`` (autocast; ``tcl.inference.precision``)."""

    def __init__(self, model, tokenizer, vocabulary: AnswerVocabulary, k: int = 128, rank_score: str = "sequence",
                 precision: str = "fp32"):
        self.model, self.vocabulary, self.k, self.rank_score = model, vocabulary, k, rank_score
        self.precision = precision
        self.candidates = None
        if model.head == "decoder":
            tokens = tokenizer.encode_answers(vocabulary.answers)
            self.candidates = (tokens.input_ids, tokens.attention_mask)

    @classmethod
    def from_config(cls, config, model, tokenizer, vocabulary: AnswerVocabulary) -> AnswerPredictor:
        """Ranking settings from a run config (``eval.k_test``, ``vqa.rank_score``)."""
        return cls(model, tokenizer, vocabulary, config.eval.k_test, config.vqa.rank_score)

    @torch.no_grad()
    def scores(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               image_index: torch.Tensor | None = None) -> torch.Tensor:
        """[B, A] answer scores (higher is better) on the model's device (``image_index``: each question's row of
        ``image`` when questions share images)."""
        device = next(self.model.parameters()).device
        candidates = None if self.candidates is None else tuple(t.to(device) for t in self.candidates)
        image_index = None if image_index is None else image_index.to(device)
        with inference_autocast(self.precision, device):
            scores = self.model.answer_scores(image.to(device), input_ids.to(device), attention_mask.to(device),
                                              candidates, self.k, self.rank_score, image_index)
        return scores.float()

    def top_answers(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    top_k: int = 5, image_index: torch.Tensor | None = None) -> list[list[dict]]:
        """The ``top_k`` answers of each question with a confidence in [0, 1]: the classifier's sigmoid per answer;
        for the decoder, the softmax over its ranked candidates (TCL)."""
        scores = self.scores(image, input_ids, attention_mask, image_index)
        confidence = scores.sigmoid() if self.candidates is None else scores.softmax(dim=1)
        top = confidence.topk(min(top_k, confidence.shape[1]), dim=1)
        return [[{"answer": self.vocabulary.answers[i], "score": round(float(c), 4)}
                 for c, i in zip(values, indices) if c > 0]
                for values, indices in zip(top.values.tolist(), top.indices.tolist())]
