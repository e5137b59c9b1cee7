"""Loading model weights from one of our checkpoint folders (``--init``)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tcl.errors import TclError


def load_model_weights(model: nn.Module, folder: str | Path) -> None:
    """Loads ``model.safetensors`` from a checkpoint folder strictly (momentum copy and queues included)."""
    from safetensors.torch import load_model

    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise TclError(f"--init {folder}: no model.safetensors there. Pass a checkpoint folder written by "
                       f"tcl pretrain (e.g. runs/pretrain_tiny/checkpoint-00000100).")
    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise TclError(f"--init {folder}: weights do not match the configured model (missing {sorted(missing)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}). Use the same model section as the checkpoint's "
                       f"config.yaml.")
