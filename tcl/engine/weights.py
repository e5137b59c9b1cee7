"""Loading model weights from one of our checkpoint folders (``--init``), written with or without DeepSpeed."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tcl.engine.checkpoint import TRAINER_STATE, find_checkpoint
from tcl.errors import TclError
from tcl.models.bert import TIED_DECODER_SUFFIX
from tcl.models.saving import shape_mismatches

DEEPSPEED_MODEL_STATES = Path("pytorch_model") / "mp_rank_00_model_states.pt"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its latest checkpoint)."""
    path = Path(path)
    if (path / TRAINER_STATE).is_file() or (path / "model.safetensors").is_file():
        return path
    if path.is_dir():
        return find_checkpoint(path, "latest")
    raise TclError(f"{path}: not a checkpoint or run folder. Pass a folder written by `tcl pretrain` "
                   f"(e.g. runs/pretrain_tiny or runs/pretrain_tiny/checkpoint-00000100).")


def read_model_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of a checkpoint (``model.safetensors``, or DeepSpeed's model-states file)."""
    folder = resolve_checkpoint(folder)
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / DEEPSPEED_MODEL_STATES).is_file():
        return torch.load(folder / DEEPSPEED_MODEL_STATES, map_location="cpu", weights_only=True)["module"]
    raise TclError(f"{folder}: no model.safetensors or {DEEPSPEED_MODEL_STATES} in this checkpoint.")


def load_model_weights(model: nn.Module, folder: str | Path, skip_prefixes: tuple[str, ...] = ()) -> None:
    """Loads a checkpoint's weights strictly (momentum copy and queues included, unless their prefixes are in
    ``skip_prefixes``); tied weights may be stored once."""
    state = {name: value for name, value in read_model_state(folder).items() if not name.startswith(skip_prefixes)}
    wrong = shape_mismatches(model, state)
    if wrong:
        raise TclError(f"{folder}: weights have another architecture than the configured model: {wrong}. Use the "
                       f"same model section as the checkpoint's config.yaml.")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not name.endswith(TIED_DECODER_SUFFIX)]
    if missing or unexpected:
        raise TclError(f"{folder}: weights do not match the configured model (missing {sorted(missing)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}). Use the same model section as the checkpoint's "
                       f"config.yaml.")
