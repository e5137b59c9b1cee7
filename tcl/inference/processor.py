"""The processor: images (paths, bytes, PIL, numpy) and questions or captions → model input tensors.

It holds what a saved model needs beside its weights to see inputs exactly as in training: the tokenizer, the image
size and normalisation, the question length cap and, for VQA, the answer list. ``save_pretrained`` writes them as
the tokenizer files, ``preprocessor_config.json`` and ``answer_list.json``; ``from_pretrained`` reads them
back from a local directory only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from tcl.atomic import write_json_atomic
from tcl.data.images import DEFAULT_MAX_IMAGE_PIXELS, as_rgb_image
from tcl.text_cleaning import pre_caption, pre_question
from tcl.data.tokenizer import TclTokenizer, load_tokenizer
from tcl.data.transforms import test_transform
from tcl.models.vision import CLIP_MEAN, CLIP_STD
from tcl.errors import DataError
from tcl.evaluation.answers import ANSWER_LIST, AnswerVocabulary

PROCESSOR_CONFIG = "preprocessor_config.json"


@dataclass
class ImageSettings:
    """How images are prepared (TCL's test transform: bicubic resize, CLIP normalisation)."""

    image_size: int
    image_mean: tuple[float, ...] = tuple(CLIP_MEAN)
    image_std: tuple[float, ...] = tuple(CLIP_STD)
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    # TCL caps questions at 50 words at test time and captions at 30.
    max_question_words: int = 50
    max_caption_words: int = 30
    max_text_len: int | None = None


class TCLProcessor:
    """Turns raw inputs into the tensors the models take.

    Args:
        tokenizer: the model's tokenizer.
        settings: image size, normalisation and text caps.
        answers: the VQA answer list (None for the pretraining model).
    """

    def __init__(self, tokenizer: TclTokenizer, settings: ImageSettings, answers: AnswerVocabulary | None = None):
        if tuple(settings.image_mean) != tuple(CLIP_MEAN) or tuple(settings.image_std) != tuple(CLIP_STD):
            raise DataError("this version normalises images with the CLIP mean/std only (as TCL); "
                            f"got mean {settings.image_mean}, std {settings.image_std} in {PROCESSOR_CONFIG}.")
        self.tokenizer, self.settings, self.answers = tokenizer, settings, answers
        self.transform = test_transform(settings.image_size)

    def fit_positions(self, max_positions: int) -> TCLProcessor:
        """Caps the token length of every text at the model's ``max_position_embeddings`` (a question whose word
        pieces run past it is cut there, as training cuts at ``max_text_len``, instead of failing inside the
        model); returns the processor."""
        current = self.settings.max_text_len
        self.settings = replace(self.settings, max_text_len=min(current or max_positions, max_positions))
        return self

    def images(self, images: Any | Sequence[Any]) -> torch.Tensor:
        """[B, 3, S, S] normalised images from one image or a list (paths, bytes, PIL images, numpy arrays)."""
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise ValueError("no images given")
        return torch.stack([self.transform(as_rgb_image(item, self.settings.max_image_pixels)) for item in items])

    def questions(self, questions: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) of questions after TCL's ``pre_question`` (``[CLS] w1 ... wn``)."""
        return self._texts(questions, lambda q: pre_question(q, self.settings.max_question_words), "question")

    def captions(self, captions: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) of captions after TCL's ``pre_caption``."""
        return self._texts(captions, lambda c: pre_caption(c, self.settings.max_caption_words), "text")

    def __call__(self, images: Any | Sequence[Any], questions: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Model inputs for VQA: ``image``, ``input_ids``, ``attention_mask``."""
        input_ids, attention_mask = self.questions(questions)
        return {"image": self.images(images), "input_ids": input_ids, "attention_mask": attention_mask}

    def _texts(self, texts, clean, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        items = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            raise ValueError(f"no {what}s given")
        cleaned = []
        for position, text in enumerate(items):
            if not isinstance(text, str):
                raise ValueError(f"{what} {position} is a {type(text).__name__}, not a string")
            cleaned.append(clean(text))
            if not cleaned[-1].strip():
                raise ValueError(f"{what} {position} ({text!r}) is empty after normalisation; ask something in words")
        tokens = self.tokenizer.encode_texts(cleaned, self.settings.max_text_len)
        return tokens.input_ids, tokens.attention_mask

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.tokenizer.save_pretrained(str(directory))
        write_json_atomic(asdict(self.settings), directory / PROCESSOR_CONFIG, indent=2)
        if self.answers is not None:
            self.answers.to_json(directory / ANSWER_LIST)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> TCLProcessor:
        directory = Path(directory)
        path = directory / PROCESSOR_CONFIG
        if not path.is_file():
            raise DataError(f"{directory}: no {PROCESSOR_CONFIG}; this is not a folder written by save_pretrained.")
        try:
            settings = ImageSettings(**json.loads(path.read_text()))
        except (TypeError, json.JSONDecodeError) as error:
            raise DataError(f"{path}: not a valid processor config ({error}).") from None
        answers = AnswerVocabulary.from_json(directory / ANSWER_LIST) if (directory / ANSWER_LIST).is_file() else None
        return cls(TclTokenizer(load_tokenizer(directory)), settings, answers)
