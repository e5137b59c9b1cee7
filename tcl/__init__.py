"""tcl: TCL-style vision-language pretraining and VQA fine-tuning.

    import tcl
    vqa = tcl.load_vqa("runs/demo/model")           # or a fine-tuning run folder; device="cuda" for a GPU
    vqa("image.jpg", "what color is the circle?")    # [{"answer": ..., "score": ...}, ...]
    model = tcl.load_pretrained("runs/pretrain_tiny")
    tcl.score_image_text(model, ["a.jpg", "b.jpg"], ["a red circle", "two squares"])
"""

__version__ = "0.1.0"

__all__ = ["load_pretrained", "load_vqa", "score_image_text"]


def load_vqa(name_or_path, device="cpu"):
    """The VQA pipeline (``tcl.inference.VQAPipeline``) of a saved folder, hub name or fine-tuning run folder, on
    ``device`` ("cpu", "cuda", "cuda:1", ...)."""
    from tcl.inference import load_vqa as _load_vqa

    return _load_vqa(name_or_path, device)


def load_pretrained(name_or_path, device="cpu"):
    """The pretraining model (``TCLPretrainModel``) of a saved folder, hub name or pretraining run folder, on
    ``device``."""
    from tcl.inference import load_pretrained as _load_pretrained

    return _load_pretrained(name_or_path, device)


def score_image_text(model, images, texts, processor=None):
    """Similarity and ITM probability of every image against every text (``tcl.inference.score_image_text``)."""
    from tcl.inference import score_image_text as _score

    return _score(model, images, texts, processor)
