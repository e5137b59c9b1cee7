"""Atomic, rotating checkpoints through accelerate's state saving.

A checkpoint folder holds accelerate's state (model with its momentum copy and queues, optimizer, scheduler, RNG
states of every process) plus ``trainer_state.json`` (epoch, batch position, step) and the resolved config. It is
written under a temporary name and renamed when complete, so a crash half-way leaves the previous checkpoint as
the latest one; ``latest`` names the newest complete checkpoint. A write that fails (disk full, permissions) removes
its partial folder and stops the run with a message naming the checkpoint to resume from.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from tcl.atomic import write_text_atomic
from tcl.errors import TclError

logger = logging.getLogger(__name__)

PREFIX = "checkpoint-"
# Size of every file of a checkpoint when it was written: a truncated file is known as such on resume.
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"


def save_checkpoint(accelerator, output_dir: str | Path, step: int, trainer_state: dict[str, Any],
                    keep_last: int, config_yaml: str) -> Path:
    """Saves the full training state as ``checkpoint-<step>`` (every process must call this)."""
    output_dir = Path(output_dir)
    final = output_dir / f"{PREFIX}{step:08d}"
    tmp = output_dir / f".tmp-{PREFIX}{step:08d}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2))
            (tmp / "config.yaml").write_text(config_yaml)
            (tmp / MANIFEST).write_text(json.dumps({p.name: p.stat().st_size for p in sorted(tmp.iterdir())
                                                    if p.is_file()}, indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            write_text_atomic(output_dir / "latest", final.name)
    except Exception as error:  # OSError, and what torch / safetensors raise for the same failures
        shutil.rmtree(tmp, ignore_errors=True)
        cause = "the disk is full" if _disk_full(error) else f"{type(error).__name__}: {error}"
        raise TclError(f"writing checkpoint {final} failed ({cause}); the partial folder was removed. "
                       f"{_previous(output_dir)} Free some space (or fix the folder's permissions) and continue with "
                       "--resume latest.") from error
    if accelerator.is_main_process:
        _prune(output_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


def _disk_full(error: BaseException) -> bool:
    """Whether an error (or one it was raised from) says the disk is full: errno ENOSPC, or the text safetensors'
    and torch's writers put in their own error types."""
    while error is not None:
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _previous(output_dir: Path) -> str:
    try:
        return f"The previous checkpoint {find_checkpoint(output_dir, 'latest')} is intact."
    except TclError:
        return "No earlier checkpoint exists."


def _prune(output_dir: Path, keep_last: int) -> None:
    checkpoints = sorted(p for p in output_dir.glob(f"{PREFIX}*") if p.is_dir() and (p / TRAINER_STATE).exists())
    for old in checkpoints[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


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
    pointer = output_dir / "latest"
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


def load_checkpoint(accelerator, path: Path) -> dict[str, Any]:
    """Restores the full training state and returns the trainer state (epoch, batch, step)."""
    try:
        accelerator.load_state(str(path))
        return json.loads((path / TRAINER_STATE).read_text())
    except (RuntimeError, OSError, ValueError, EOFError) as error:  # what torch / safetensors raise on bad bytes
        raise TclError(f"checkpoint {path} could not be loaded ({type(error).__name__}: {str(error)[:200]}). "
                       "Resume from an earlier checkpoint folder, or with --resume latest-intact.") from None
