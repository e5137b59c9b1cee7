"""The layout of a training run folder, as every reader sees it (library and engine alike).

A run folder holds ``checkpoint-<step>`` folders, each complete when it has ``trainer_state.json`` and, since the
manifest was introduced, ``manifest.json`` with the size of every file when it was written; ``latest`` names the
newest complete checkpoint. Writing checkpoints (through accelerate) is the engine's part: tcl.engine.checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tcl.errors import TclError

logger = logging.getLogger(__name__)

PREFIX = "checkpoint-"
# Size of every file of a checkpoint when it was written: a truncated file is known as such on resume.
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
LATEST = "latest"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its latest checkpoint)."""
    path = Path(path)
    if (path / TRAINER_STATE).is_file() or (path / "model.safetensors").is_file():
        return path
    if path.is_dir():
        return find_checkpoint(path, "latest")
    raise TclError(f"{path}: not a checkpoint or run folder. Pass a folder written by `tcl pretrain` "
                   f"(e.g. runs/pretrain_tiny or runs/pretrain_tiny/checkpoint-00000100).")


def find_checkpoint(output_dir: str | Path, resume: str) -> Path:
    """The checkpoint named by ``--resume``: ``latest`` (in ``output_dir``), ``latest-intact`` (the newest one that
    passes ``checkpoint_problem``) or a checkpoint folder. A damaged checkpoint stops the run with a message naming
    what is wrong and the newest intact one."""
    if resume not in ("latest", "latest-intact"):
        path = Path(resume)
        if not (path / TRAINER_STATE).is_file():
            raise TclError(f"--resume {resume}: not a complete checkpoint folder (no {TRAINER_STATE}).")
        _refuse_if_damaged(path, resume, [])
        return path
    output_dir = Path(output_dir)
    candidates = sorted(p for p in output_dir.glob(f"{PREFIX}*") if (p / TRAINER_STATE).is_file())
    pointer = output_dir / LATEST
    named = output_dir / pointer.read_text().strip() if pointer.is_file() else None
    chosen = named if named is not None and (named / TRAINER_STATE).is_file() else (candidates or [None])[-1]
    if chosen is None:
        raise TclError(f"--resume {resume}: no checkpoint in {output_dir}. Start without --resume, or point "
                       f"train.output_dir at the run to continue.")
    if resume == "latest-intact":
        intact = [p for p in candidates if checkpoint_problem(p) is None]
        if not intact:
            raise TclError(f"--resume latest-intact: every checkpoint in {output_dir} is damaged "
                           f"({chosen.name}: {checkpoint_problem(chosen)}).")
        if intact[-1] != chosen:
            logger.warning("%s is damaged (%s); resuming from %s, the newest intact checkpoint", chosen.name,
                           checkpoint_problem(chosen), intact[-1].name)
        return intact[-1]
    _refuse_if_damaged(chosen, resume, candidates)
    return chosen


def _refuse_if_damaged(path: Path, resume: str, candidates: list[Path]) -> None:
    problem = checkpoint_problem(path)
    if problem is None:
        return
    intact = [p for p in candidates if p != path and checkpoint_problem(p) is None]
    offer = (f" The newest intact checkpoint is {intact[-1]}: resume with --resume {intact[-1]} or --resume "
             "latest-intact." if intact else " No other intact checkpoint exists; start the run again.")
    raise TclError(f"--resume {resume}: checkpoint {path} is damaged: {problem}.{offer}")


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with a checkpoint folder (a file missing, empty, of another size than when it was written, or
    weights that do not parse), or None. Checkpoints without a manifest (written by older versions) are checked for
    empty files and readable weights only."""
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            sizes = json.loads(manifest.read_text())
        except ValueError:
            return f"{MANIFEST} is not valid JSON"
        for name, size in sizes.items():
            file = path / name
            if not file.is_file():
                return f"{name} is missing"
            if file.stat().st_size != size:
                return f"{name} is {file.stat().st_size:,} bytes, {size:,} when written"
    for file in sorted(path.iterdir()):
        if file.is_file() and file.stat().st_size == 0:
            return f"{file.name} is empty"
    for weights in sorted(path.glob("*.safetensors")):
        try:
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # safetensors' own error type: a header that does not parse
            return f"{weights.name} does not parse ({error})"
    return None


# How a training run starts in its folder: a new run (the folder must hold none), the run there continued, or replaced.
STARTS = ("new", "resume", "overwrite")


def folder_start(resume: str | None, overwrite: bool) -> str:
    """How a training run starts in its folder (one of ``STARTS``), from its --resume and --overwrite."""
    if resume and overwrite:
        raise TclError("--resume continues the run in train.output_dir and --overwrite deletes it: give one of them.")
    return "resume" if resume else "overwrite" if overwrite else "new"
