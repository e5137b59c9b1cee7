"""Inference for users: processors, the VQA pipeline, image–text scoring, saving and loading."""

from tcl.inference.image_text import load_pretrained, score_image_text
from tcl.inference.pipeline import VQAPipeline
from tcl.inference.processor import TCLProcessor

__all__ = ["TCLProcessor", "VQAPipeline", "load_pretrained", "load_vqa", "score_image_text"]


def load_vqa(name_or_path, device="cpu", precision: str = "fp32") -> VQAPipeline:
    """The VQA pipeline of a saved model folder, a hub name, or a fine-tuning run folder, on ``device``, answering in
    ``precision`` (``fp32``, ``bf16``, or ``auto``: bf16 on a CUDA device with bf16, else fp32)."""
    return VQAPipeline.from_pretrained(name_or_path).to(device, precision)
