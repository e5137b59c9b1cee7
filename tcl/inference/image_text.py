"""The pretraining model for users: ``tcl.load_pretrained(path)`` and ``tcl.score_image_text(model, images, texts)``.

``load_pretrained`` takes a folder written by ``save_pretrained`` or ``tcl convert`` (or a hub name), or a
pretraining run folder, and attaches the processor as ``model.processor`` when the folder has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tcl.inference.processor import PROCESSOR_CONFIG, ImageSettings, TCLProcessor
from tcl.models.pretrain import TCLPretrainModel
from tcl.models.saving import CONFIG_FILE, RUN_CONFIG, resolve_model_dir


def load_pretrained(name_or_path: str | Path, device: str = "cpu") -> TCLPretrainModel:
    """The pretraining model (on ``device``, eval mode) with ``model.processor`` (None if the folder has no
    processor, and for an official ``.pth``, which is converted on the fly)."""
    return _load(name_or_path).to(device)  # .to moves the module in place: model.processor stays


def _load(name_or_path: str | Path) -> TCLPretrainModel:
    if Path(name_or_path).is_file():
        model = TCLPretrainModel.from_pretrained(name_or_path)
        model.processor = None
        return model
    directory = resolve_model_dir(name_or_path)
    if not (directory / CONFIG_FILE).is_file() and (directory / RUN_CONFIG).is_file():
        return _from_run(directory)
    model = TCLPretrainModel.from_pretrained(directory)
    model.processor = TCLProcessor.from_pretrained(directory) if (directory / PROCESSOR_CONFIG).is_file() else None
    return model


def _from_run(run_dir: Path) -> TCLPretrainModel:
    from tcl.inference.runs import load_pretrain_run

    config, model, tokenizer = load_pretrain_run(run_dir)
    model.processor = TCLProcessor(tokenizer, ImageSettings(image_size=config.model.image_size,
                                                            max_image_pixels=config.data.max_image_pixels,
                                                            max_caption_words=config.data.max_caption_words,
                                                            max_text_len=config.model.max_text_len))
    return model


def score_image_text(model: TCLPretrainModel, images: Any | Sequence[Any], texts: str | Sequence[str],
                     processor: TCLProcessor | None = None) -> dict[str, list[list[float]]]:
    """Similarity and ITM match probability of every image against every text.

    Args:
        model: a pretraining model (``load_pretrained``).
        images: one image or a list (paths, bytes, PIL images, numpy arrays).
        texts: one caption or a list.
        processor: defaults to ``model.processor``.

    Returns:
        ``{"similarity": [[...]], "itm": [[...]]}``, rows = images, columns = texts; similarity is the cosine of the
        contrastive features (-1..1), itm the probability that the pair matches (0..1).
    """
    processor = processor or getattr(model, "processor", None)
    if processor is None:
        raise ValueError("this model has no processor; pass processor=TCLProcessor.from_pretrained(folder)")
    processor.fit_positions(model.model_config.max_position_embeddings)
    device = next(model.parameters()).device
    image = processor.images(images).to(device)
    input_ids, attention_mask = processor.captions(texts)
    similarity, itm = model.eval().image_text_scores(image, input_ids.to(device), attention_mask.to(device))
    return {"similarity": similarity.tolist(), "itm": itm.tolist()}
