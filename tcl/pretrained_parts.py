"""Where the pretrained parts a config names are: local files, or the Hugging Face hub (its cache when offline).

A config names up to three parts made elsewhere: the image encoder's weights (``model.vision_pretrained``: a timm
model name such as DeiT-B's, a weights file, or a folder), BERT's weights (``model.text_pretrained``) and the
tokenizer (``data.tokenizer``). Compute nodes of many clusters cannot reach the hub, so every part may be a local
file or folder, and the hub is only asked for a hub name, through ``huggingface_hub`` with its offline mode
(``HF_HUB_OFFLINE=1``) honoured: then only its cache is read and no connection is made.

``locate`` turns a part into local files (downloading into the hub's cache when the hub is reachable);
``check_parts`` does so for every part before a run does anything else and raises one message naming each missing
part, the setting that names it and the two ways forward. ``write_parts`` lays out the folder that
``tcl fetch-pretrained`` writes (and that the settings accept): ``vision/`` as timm saves a model for the hub,
``text/`` and ``tokenizer/`` as transformers' ``save_pretrained``.
"""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tcl.errors import DataError

# The folders of a fetched set of parts, one per part, and the weight files each kind of folder may hold.
VISION_FOLDER, TEXT_FOLDER, TOKENIZER_FOLDER = "vision", "text", "tokenizer"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")
OPTIONAL_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")
OVERRIDES_FILE = "overrides.txt"


class MissingPretrainedPart(DataError):
    """A pretrained part a config names cannot be found (exit status 2, as every user error)."""


@dataclass(frozen=True)
class Part:
    """One pretrained part: what it is, the setting that names it, its value, and its folder in a fetched set."""

    what: str
    setting: str
    value: str
    folder: str


def vision_part(value: str) -> Part:
    return Part("DeiT/ViT image encoder weights", "model.vision_pretrained", value, VISION_FOLDER)


def text_part(value: str) -> Part:
    return Part("BERT weights", "model.text_pretrained", value, TEXT_FOLDER)


def tokenizer_part(value: str) -> Part:
    return Part("tokenizer", "data.tokenizer", value, TOKENIZER_FOLDER)


def weight_parts(model_config) -> list[Part]:
    """The weight parts a ``ModelConfig`` names (none for a model trained from scratch)."""
    parts = []
    if model_config.vision_pretrained:
        parts.append(vision_part(str(model_config.vision_pretrained)))
    if model_config.text_pretrained:
        parts.append(text_part(str(model_config.text_pretrained)))
    return parts


def config_parts(config, weights: bool = True) -> list[Part]:
    """The parts a ``Config`` names: the weights (``weights``: unless they come from a run of ours) and the
    tokenizer when ``data.tokenizer`` names one (else it is a run's or the generated data's, never the hub's)."""
    parts = weight_parts(config.model) if weights else []
    if config.data.tokenizer:
        parts.append(tokenizer_part(str(config.data.tokenizer)))
    return parts


def missing_parts_error(problems: Sequence[tuple[Part, str]], other_way: str | None = None) -> MissingPretrainedPart:
    """The one message for parts that cannot be found: each part, its setting and why; then the ways forward."""
    lines = [f"  - {part.what} ({part.setting}={part.value}): {problem}" for part, problem in problems]
    settings = " ".join(f"{part.setting}=DIR/{part.folder}" for part, _ in problems)
    ways = ["make the Hugging Face hub reachable from this machine and give the hub name (unset HF_HUB_OFFLINE; "
            "HF_HOME or HF_HUB_CACHE may point at a cache that already holds it)",
            f"on a machine that reaches the hub run `tcl fetch-pretrained --config CONFIG --out DIR` and set "
            f"{settings} (a local file or folder of your own works the same way)"]
    if other_way:
        ways.append(other_way)
    listed = " or ".join(f"({index}) {way}" for index, way in enumerate(ways, 1))
    noun = "a pretrained part is" if len(problems) == 1 else "pretrained parts are"
    return MissingPretrainedPart(f"{noun} missing:\n" + "\n".join(lines) + f"\nTo go on: {listed}.")


def check_parts(parts: Sequence[Part]) -> dict[Part, Path]:
    """Locates every part; raises one ``MissingPretrainedPart`` naming all the missing ones."""
    found, problems, hub = {}, [], _Hub()
    for part in parts:
        try:
            found[part] = _locate(part, hub)
        except _Missing as missing:
            problems.append((part, str(missing)))
    if problems:
        raise missing_parts_error(problems)
    return found


def locate(part: Part) -> Path:
    """The local file (vision weights) or folder (BERT weights, tokenizer) of a part.

    Raises:
        MissingPretrainedPart: the part is neither a usable local file or folder nor on the hub (or in its cache).
    """
    try:
        return _locate(part, _Hub())
    except _Missing as missing:
        raise missing_parts_error([(part, str(missing))]) from None


def hub_offline() -> bool:
    """Whether the hub must not be contacted: ``HF_HUB_OFFLINE`` (read now, not when huggingface_hub was imported)
    or transformers' ``TRANSFORMERS_OFFLINE``."""
    from huggingface_hub import constants

    truthy = {"1", "ON", "YES", "TRUE"}
    return (constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in truthy
            or os.environ.get("TRANSFORMERS_OFFLINE", "").strip().upper() in truthy)


def names_a_local_path(value: str) -> bool:
    """Whether ``value`` can only be a local path: it exists, or is absolute, or relative to . / .. / ~, or has more
    folders than a hub id's ``namespace/name`` (such a value must never reach the hub, whose error speaks of repo
    ids)."""
    return Path(value).expanduser().exists() or value.startswith(("/", "./", "../", "~")) or value.count("/") > 1


# ---------------------------------------------------------------------------------------------------------------------
# Finding the files


class _Missing(Exception):
    """Why one part cannot be found (turned into the one message by the callers)."""


def _locate(part: Part, hub: _Hub) -> Path:
    if names_a_local_path(part.value):
        return _local(part, Path(part.value).expanduser())
    if part.folder == VISION_FOLDER:
        return _hub_vision(part.value, hub)
    if part.folder == TEXT_FOLDER:
        return hub.files(part.value, [("config.json",), WEIGHT_FILES]).parent
    return hub.files(part.value, [TOKENIZER_FILES], OPTIONAL_TOKENIZER_FILES).parent


def _local(part: Part, path: Path) -> Path:
    if not path.exists():
        raise _Missing(f"{path} does not exist")
    if path.is_file():
        if part.folder != VISION_FOLDER:
            raise _Missing(f"{path} is a file; give the folder that save_pretrained wrote")
        if path.suffix not in WEIGHT_SUFFIXES:
            raise _Missing(f"{path} is not a weights file ({', '.join(WEIGHT_SUFFIXES)})")
        return path
    folder = _snapshot(path)
    if part.folder == VISION_FOLDER:
        return _first_present(folder, WEIGHT_FILES)
    if part.folder == TEXT_FOLDER:
        _first_present(folder, ("config.json",))
        _first_present(folder, WEIGHT_FILES + ("model.safetensors.index.json", "pytorch_model.bin.index.json"))
        return folder
    _first_present(folder, TOKENIZER_FILES)
    return folder


def _snapshot(folder: Path) -> Path:
    """A hub cache folder (``models--org--name``) means the snapshot its ``refs/main`` names (else the newest)."""
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        return folder
    main = folder / "refs" / "main"
    if main.is_file() and (snapshots / main.read_text().strip()).is_dir():
        return snapshots / main.read_text().strip()
    candidates = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise _Missing(f"{folder} is a hub cache folder without snapshots")
    return candidates[-1]


def _first_present(folder: Path, names: Sequence[str]) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise _Missing(f"{folder} holds none of {', '.join(names)}")


def _hub_vision(name: str, hub: _Hub) -> Path:
    """The weights file of a timm model name (``deit_base_patch16_224.fb_in1k``), from the hub or its cache."""
    from timm.models import get_pretrained_cfg

    try:
        config = get_pretrained_cfg(name)
    except Exception:  # timm raises several kinds for a name it does not know
        config = None
    if config is None or not config.hf_hub_id:
        raise _Missing("neither a local file or folder nor a timm model whose weights are on the hub "
                       "(`timm.list_pretrained()` lists those)")
    files = (config.hf_hub_filename,) if config.hf_hub_filename else WEIGHT_FILES
    return hub.files(config.hf_hub_id, [files])


# Set once the hub proved out of reach in this process: from then on only its cache is read (each unreachable file
# costs huggingface_hub's five retries, about 20 s).
_HUB_UNREACHABLE = []


class _Hub:
    """The hub as seen from this process: offline when asked (``hub_offline``) or once it proved unreachable."""

    def __init__(self):
        self.offline = hub_offline() or bool(_HUB_UNREACHABLE)
        self.unreachable = bool(_HUB_UNREACHABLE) and not hub_offline()

    def files(self, repo: str, required: Sequence[Sequence[str]], optional: Sequence[str] = ()) -> Path:
        """Downloads (offline: finds in the cache) one file of each group of alternatives and the optional files
        there are; returns the last required file's path (its folder is the snapshot)."""
        path = None
        for alternatives in required:
            path = self._first_of(repo, alternatives)
        for filename in optional:  # the tokenizer loads without them (BERT's defaults): a failure is no error
            with suppress(_Missing, OSError, ValueError):
                self._download(repo, filename)
        return path

    def _first_of(self, repo: str, alternatives: Sequence[str]) -> Path:
        for filename in alternatives:
            path = self._download(repo, filename)
            if path is not None:
                return path
        raise _Missing(_why_not_found(repo, alternatives, self))

    def _download(self, repo: str, filename: str) -> Path | None:
        """The file's local path, or None when the repository (or, unreachable hub, the cache) does not have it."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                            RemoteEntryNotFoundError, RepositoryNotFoundError)

        try:
            return Path(hf_hub_download(repo, filename, local_files_only=self.offline))
        except GatedRepoError:
            raise _Missing(f"{repo} is gated on the hub: accept its terms there and log in (`hf auth login`)") from None
        except RepositoryNotFoundError:
            raise _Missing(f"not a local path, and the hub has no repository {repo}") from None
        except RemoteEntryNotFoundError:
            return None
        except LocalEntryNotFoundError:  # not cached, and the hub is offline or out of reach
            if not self.offline:
                self.offline = self.unreachable = True
                _HUB_UNREACHABLE.append(repo)
                return self._download(repo, filename)
            return None
        except (HfHubHTTPError, OSError, ValueError) as error:
            raise _Missing(f"the hub did not give {repo}/{filename}: {_first_line(error)}") from None


def _why_not_found(repo: str, filenames: Sequence[str], hub: _Hub) -> str:
    from huggingface_hub import constants

    listed = " or ".join(filenames)
    cache = f"its cache ({constants.HF_HUB_CACHE}) holds no {listed} of {repo}"
    if hub.unreachable:
        return f"the hub cannot be reached from this machine and {cache}"
    if hub.offline:
        return f"the hub is offline (HF_HUB_OFFLINE) and {cache}"
    return f"the hub has no {listed} in {repo}"


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# ---------------------------------------------------------------------------------------------------------------------
# Writing a set of parts


def write_parts(out: str | Path, vision=None, text=None, tokenizer=None, vision_args: dict | None = None) -> dict:
    """Saves the parts given into ``out`` (a timm model into ``vision/``, a transformers model into ``text/``, a
    tokenizer into ``tokenizer/``) and returns the overrides that use them, by setting; ``overrides.txt`` in ``out``
    holds them as one line of ``setting=path`` words.

    ``vision_args``: the keyword arguments the timm model was built with beyond its architecture's (timm stores them
    in ``config.json``, so ``timm.create_model("local-dir:<out>/vision", pretrained=True)`` builds it again).
    """
    from timm.models import save_for_hf

    out = Path(out)
    overrides = {}
    if vision is not None:
        save_for_hf(vision, str(out / VISION_FOLDER), model_args=vision_args, safe_serialization=True)
        overrides["model.vision_pretrained"] = str(out / VISION_FOLDER)
    if text is not None:
        text.save_pretrained(str(out / TEXT_FOLDER))
        overrides["model.text_pretrained"] = str(out / TEXT_FOLDER)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out / TOKENIZER_FOLDER))
        overrides["data.tokenizer"] = str(out / TOKENIZER_FOLDER)
    (out / OVERRIDES_FILE).write_text(" ".join(f"{setting}={path}" for setting, path in overrides.items()) + "\n")
    return overrides


def fetch_parts(parts: Sequence[Part], out: str | Path) -> dict[str, str]:
    """Downloads every hub part of ``parts`` (one message for all that cannot be had), loads each with its own
    library and writes them into ``out`` with ``write_parts``; returns the overrides that use the folder. Parts that
    are local paths already are left as they are."""
    from timm import create_model
    from transformers import BertForMaskedLM, BertTokenizer

    hub_parts = [part for part in parts if not names_a_local_path(part.value)]
    if not hub_parts:
        return {}
    found = check_parts(hub_parts)
    loaded = {}
    for part in hub_parts:
        if part.folder == VISION_FOLDER:  # built by timm from the file just fetched: no second download
            loaded["vision"] = create_model(part.value, pretrained=True,
                                            pretrained_cfg_overlay={"file": str(found[part])})
        elif part.folder == TEXT_FOLDER:
            loaded["text"] = BertForMaskedLM.from_pretrained(str(found[part]))
        else:
            loaded["tokenizer"] = BertTokenizer.from_pretrained(str(found[part]))
    return write_parts(out, **loaded)
