"""Atomic, rotating checkpoints through accelerate's state saving.

A checkpoint folder holds accelerate's state (model with its momentum copy and queues, optimizer, scheduler, RNG
states of every process) plus ``trainer_state.json`` (epoch, batch position, step) and the resolved config. It is
written under a temporary name and renamed when complete, so a crash half-way leaves the previous checkpoint as
the latest one; ``latest`` names the newest complete checkpoint. A write that fails (disk full, permissions) removes
its partial folder and stops the run with a message naming the checkpoint to resume from.
"""

from __future__ import annotations

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
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            write_text_atomic(output_dir / "latest", final.name)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TclError(f"writing checkpoint {final} failed: {error}. {_previous(output_dir)} Free some space (or fix "
                       "the folder's permissions) and continue with --resume latest.") from error
    if accelerator.is_main_process:
        _prune(output_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


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
    """The checkpoint named by ``--resume``: ``latest`` (in ``output_dir``) or a checkpoint folder."""
    if resume != "latest":
        path = Path(resume)
        if not (path / TRAINER_STATE).is_file():
            raise TclError(f"--resume {resume}: not a complete checkpoint folder (no {TRAINER_STATE}).")
        return path
    pointer = Path(output_dir) / "latest"
    candidates = sorted(p for p in Path(output_dir).glob(f"{PREFIX}*") if (p / TRAINER_STATE).is_file())
    if pointer.is_file() and (Path(output_dir) / pointer.read_text().strip() / TRAINER_STATE).is_file():
        return Path(output_dir) / pointer.read_text().strip()
    if candidates:
        return candidates[-1]
    raise TclError(f"--resume latest: no checkpoint in {output_dir}. Start without --resume, or point "
                   f"train.output_dir at the run to continue.")


def load_checkpoint(accelerator, path: Path) -> dict[str, Any]:
    """Restores the full training state and returns the trainer state (epoch, batch, step)."""
    accelerator.load_state(str(path))
    return json.loads((path / TRAINER_STATE).read_text())
