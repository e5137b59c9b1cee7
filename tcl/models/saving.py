"""Hugging Face–style ``save_pretrained`` / ``from_pretrained`` for the pretraining and VQA models.

A saved model is a folder with ``config.json`` (the architecture, enough to rebuild the model without any other
file), ``model.safetensors`` (the weights; a tied LM decoder is stored once, under the word embeddings) and, written
by the processor or pipeline beside them, the tokenizer files, ``preprocessor_config.json`` and, for VQA,
``answer_list.json``. Loading reads local folders; a name that is not a local folder is fetched from the Hugging Face
hub by ``from_pretrained`` itself (never inside a constructor), which needs the hub to be reachable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tcl.atomic import atomic_write, write_json_atomic
from tcl.errors import TclError
from tcl.models.bert import TIED_DECODER_SUFFIX
from tcl.models.surgery import load_strict
from tcl.run_folder import resolve_checkpoint

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# The resolved config of a training run folder (``tcl pretrain`` / ``tcl finetune-vqa``), which loaders also accept.
RUN_CONFIG = "config.yaml"
# The text encoder's word embeddings in a training state dict: one row per word of the run's tokenizer.
WORD_EMBEDDINGS = "text_encoder.embeddings.word_embeddings.weight"
FORMAT_VERSION = 1
# The model weights in a checkpoint written with DeepSpeed.
DEEPSPEED_MODEL_STATES = Path("pytorch_model") / "mp_rank_00_model_states.pt"


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A local folder as is; otherwise a Hugging Face hub repository name, downloaded (or taken from the cache)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if _looks_local(str(name_or_path)):
        raise TclError(f"{name_or_path}: no such folder. Pass a folder written by save_pretrained / `tcl convert` "
                       f"or a training run's output folder (check the name: {path.parent} holds "
                       f"{_few_entries(path.parent)}).")
    if path.exists() or str(name_or_path).count("/") != 1:
        raise TclError(f"{name_or_path}: not a model folder. Pass a folder written by save_pretrained / "
                       f"`tcl convert`, or a Hugging Face hub name such as 'user/tcl-vqa'.")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path)))
    except Exception as error:  # offline, unknown repository, no permission: all end the same way for the user
        raise TclError(f"{name_or_path}: no such local folder, and the Hugging Face hub could not provide it "
                       f"({type(error).__name__}: {error}). Download the model folder and pass its path.") from None


def _looks_local(name: str) -> bool:
    """A path the user means as a local folder: absolute, ``./``, ``../`` or ``~``, or whose first part is a folder
    here (``runs/demo``); a hub name is ``user/repo`` with no such folder."""
    if name.startswith(("/", "./", "../", "~", "\\")) or name in (".", ".."):
        return True
    first = Path(name).parts[0] if Path(name).parts else ""
    return bool(first) and Path(first).is_dir()


def _few_entries(folder: Path) -> str:
    if not folder.is_dir():
        return "nothing: it does not exist either"
    names = sorted(p.name for p in folder.iterdir())
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "nothing"


# The architectures a saved model's config.json may name, and the function that loads each.
LOADERS = {"TCLPretrainModel": "tcl.load_pretrained", "TCLVQAModel": "tcl.load_vqa"}


def read_model_config(directory: Path, architecture: str) -> dict[str, Any]:
    """``config.json`` of a saved model, checked to describe ``architecture``."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise TclError(f"{directory}: no {CONFIG_FILE}; not a folder written by save_pretrained or `tcl convert`.")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TclError(f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}.") from None
    found = payload.get("architecture") if isinstance(payload, dict) else None
    if found not in LOADERS:
        known = ", ".join(f"{name} ({loader})" for name, loader in LOADERS.items())
        raise TclError(f"{path}: names the architecture {found!r}, which this version of tcl does not know (it knows "
                       f"{known}). The folder was written by another tool or a newer tcl.")
    if found != architecture:
        raise TclError(f"{path}: holds a {found} model, not a {architecture}. Use {LOADERS[found]} for it.")
    return payload


def save_weights(model: nn.Module, directory: Path, skip_prefixes: tuple[str, ...] = ()) -> None:
    """Writes ``model.safetensors`` atomically (tied LM decoders once; ``skip_prefixes`` left out)."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()
             if not name.endswith(TIED_DECODER_SUFFIX) and not name.startswith(skip_prefixes)}
    with atomic_write(directory / WEIGHTS_FILE) as temporary:
        save_file(state, str(temporary), metadata={"format": "pt"})


def load_weights(model: nn.Module, directory: Path, allowed_missing: tuple[str, ...] = ()) -> None:
    """Loads ``model.safetensors`` strictly (a tied LM decoder and names starting with ``allowed_missing`` may be
    absent), with a message naming what does not fit."""
    from safetensors.torch import load_file

    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise TclError(f"{directory}: no {WEIGHTS_FILE}.")
    try:
        state = load_file(str(path))
    except Exception as error:  # safetensors raises its own error type (and OSError) for damaged files
        raise TclError(f"{path}: damaged or incomplete ({error}); save or download the model again.") from None
    load_strict(model, state, str(path), f"The file does not match the model described by {CONFIG_FILE}.",
                allowed_missing)


def read_model_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of a training run's checkpoint (a run folder means its latest checkpoint):
    ``model.safetensors``, or DeepSpeed's model-states file."""
    folder = resolve_checkpoint(folder)
    if (folder / WEIGHTS_FILE).is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / WEIGHTS_FILE))
    if (folder / DEEPSPEED_MODEL_STATES).is_file():
        return torch.load(folder / DEEPSPEED_MODEL_STATES, map_location="cpu", weights_only=True)["module"]
    raise TclError(f"{folder}: no {WEIGHTS_FILE} or {DEEPSPEED_MODEL_STATES} in this checkpoint.")


def load_model_weights(model: nn.Module, folder: str | Path, skip_prefixes: tuple[str, ...] = ()) -> None:
    """Loads a training checkpoint's weights strictly (momentum copy and queues included, unless their prefixes are
    in ``skip_prefixes``)."""
    state = {name: value for name, value in read_model_state(folder).items() if not name.startswith(skip_prefixes)}
    load_strict(model, state, str(folder), "Use the same model section as the checkpoint's config.yaml.")


def write_model_config(directory: Path, payload: dict[str, Any]) -> None:
    write_json_atomic({"format_version": FORMAT_VERSION, **payload}, directory / CONFIG_FILE, indent=2)


def vocab_size_of(model: nn.Module) -> int:
    return int(model.text_encoder.embeddings.word_embeddings.num_embeddings)


def on_cpu(model: nn.Module) -> nn.Module:
    """Loaded models start on the CPU in eval mode; move them with ``.to(device)``."""
    return model.to(torch.device("cpu")).eval()


def config_field(payload: dict[str, Any], key: str, directory: Path) -> Any:
    if key not in payload:
        raise TclError(f"{directory / CONFIG_FILE}: missing '{key}'; the file is incomplete or from another tool.")
    return payload[key]
