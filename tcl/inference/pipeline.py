"""Question answering for users: ``vqa = tcl.load_vqa(path); vqa(image, question, top_k=5)``.

``VQAPipeline`` pairs a VQA model with its processor and answers one question (a list of ``{"answer", "score"}``) or
lists of images and questions (a list of such lists), in batches. It loads from a folder written by
``save_pretrained`` (or a hub name), or straight from a fine-tuning run folder (``runs/vqa_tiny``).
``answer_batch`` answers prepared image tensors in one forward pass, each image encoded once for all its questions;
``tcl predict`` and the request batcher of ``tcl serve`` use it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tcl.atomic import write_json_atomic
from tcl.inference.answering import AnswerPredictor
from tcl.inference.precision import resolve_inference_precision
from tcl.inference.processor import ImageSettings, TCLProcessor
from tcl.models.saving import CONFIG_FILE, RUN_CONFIG, resolve_model_dir
from tcl.models.vqa import TCLVQAModel


class VQAPipeline:
    """A VQA model, its processor and its answering settings.

    Args:
        model: a ``TCLVQAModel`` (either head).
        processor: its processor, with the answer list.
        k_test: candidates the decoder head ranks per question.
        rank_score: the decoder head's ranking score (``sequence`` or ``tcl``).
    """

    def __init__(self, model: TCLVQAModel, processor: TCLProcessor, k_test: int = 128, rank_score: str = "sequence"):
        if processor.answers is None:
            raise ValueError("the processor of a VQA pipeline needs the answer list (answer_list.json)")
        if len(processor.answers) != model.num_answers:
            raise ValueError(f"the answer list has {len(processor.answers)} answers but the model was trained with "
                             f"{model.num_answers}")
        self.model, self.processor = model.eval(), processor.fit_positions(model.model_config.max_position_embeddings)
        self.k_test, self.rank_score = k_test, rank_score
        self.predictor = AnswerPredictor(model, processor.tokenizer, processor.answers, k_test, rank_score)
        self.precision_setting = "fp32"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def precision(self) -> str:
        """``fp32`` or ``bf16`` (autocast): what answering runs in on the model's device."""
        return self.predictor.precision

    def to(self, device: str | torch.device, precision: str | None = None) -> VQAPipeline:
        """Moves the model to ``device``; ``precision`` (``auto``: bf16 on a CUDA device with bf16, else fp32;
        ``fp32``; ``bf16``) is resolved for it. Without ``precision`` the last setting stays (fp32 at first)."""
        self.model.to(device)
        self.precision_setting = precision or self.precision_setting
        self.predictor.precision = resolve_inference_precision(self.precision_setting, device)
        return self

    def __call__(self, image: Any | Sequence[Any], question: str | Sequence[str], top_k: int = 5,
                 batch_size: int = 32, progress: bool | None = None) -> list[dict] | list[list[dict]]:
        """The ``top_k`` answers with confidences for one image and question, or for equal-length lists of both.

        Images may be paths, encoded bytes, PIL images or numpy arrays. Confidences are the classifier's sigmoid per
        answer, or the decoder's softmax over its ranked candidates. ``progress`` shows a progress bar (default: for
        lists longer than one batch).
        """
        single = isinstance(question, str)
        images = [image] if single else list(image)
        questions = [question] if single else list(question)
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions; give one image per question")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        answers: list[list[dict]] = []
        show = len(questions) > batch_size if progress is None else progress
        with tqdm(total=len(questions), desc="answer", unit="question", disable=not show) as bar:
            for start in range(0, len(questions), batch_size):
                batch = self.processor(images[start:start + batch_size], questions[start:start + batch_size])
                answers += self.predictor.top_answers(batch["image"], batch["input_ids"], batch["attention_mask"],
                                                      top_k)
                bar.update(len(batch["input_ids"]))
        return answers[0] if single else answers

    def explain(self, image: Any, question: str, top_k: int = 5) -> tuple[list[dict], torch.Tensor]:
        """The ``top_k`` answers of one question and where the model looked: the fusion encoder's cross-attention
        over the image patches as a [G, G] grid (maximum 1), from the same forward pass (``tcl.inference.attention``).
        """
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        answers, grids = self.answer_batch(self.processor.images([image]), [question], top_k, attention=True)
        return answers[0], grids[0]

    def answer_batch(self, images: torch.Tensor, questions: Sequence[str], top_k: int = 5,
                     image_index: torch.Tensor | None = None, attention: bool = False
                     ) -> tuple[list[list[dict]], torch.Tensor | None]:
        """The ``top_k`` answers of prepared images and their questions, in one forward pass.

        Args:
            images: [N, 3, S, S] from ``processor.images``.
            questions: B questions.
            image_index: [B], each question's row of ``images``: an image is encoded once for all its questions.
                None: one image per question (N = B).
            attention: also return each question's cross-attention grid, [B, G, G] (as ``explain``).

        Returns:
            (answers per question, grids or None).
        """
        from tcl.inference.attention import attention_grid, capture_cross_attention

        input_ids, attention_mask = self.processor.questions(list(questions))
        if not attention:
            return self.predictor.top_answers(images, input_ids, attention_mask, top_k, image_index), None
        with capture_cross_attention(self.model) as maps:
            answers = self.predictor.top_answers(images, input_ids, attention_mask, top_k, image_index)
        # The decoder head runs the question through the fusion encoder once; its own layers are not hooked.
        return answers, attention_grid(maps[:len(self.model.fusion_encoder.layer)], attention_mask)

    def save_pretrained(self, directory: str | Path) -> None:
        """Model, processor and answering settings in one folder, loadable with ``tcl.load_vqa``."""
        self.model.save_pretrained(directory)
        self.processor.save_pretrained(directory)
        path = Path(directory) / CONFIG_FILE
        payload = json.loads(path.read_text())
        payload["answering"] = {"k_test": self.k_test, "rank_score": self.rank_score}
        write_json_atomic(payload, path, indent=2)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> VQAPipeline:
        """From a ``save_pretrained`` folder, a hub name, or a fine-tuning run folder (its latest checkpoint)."""
        directory = resolve_model_dir(name_or_path)
        if not (directory / CONFIG_FILE).is_file() and (directory / RUN_CONFIG).is_file():
            return cls.from_run(directory)
        model = TCLVQAModel.from_pretrained(directory)
        answering = json.loads((directory / CONFIG_FILE).read_text()).get("answering", {})
        return cls(model, TCLProcessor.from_pretrained(directory), **answering)

    @classmethod
    def from_run(cls, run_dir: str | Path) -> VQAPipeline:
        """From a fine-tuning run folder written by ``tcl finetune-vqa``."""
        from tcl.inference.runs import load_vqa_run

        config, model, tokenizer, vocabulary = load_vqa_run(Path(run_dir))
        settings = ImageSettings(image_size=config.model.image_size, max_image_pixels=config.data.max_image_pixels,
                                 max_question_words=max(config.data.max_question_words, 50))
        return cls(model.eval(), TCLProcessor(tokenizer, settings, vocabulary), config.eval.k_test,
                   config.vqa.rank_score)
