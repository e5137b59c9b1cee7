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
import os
import shutil
from pathlib import Path
from typing import Any

from tcl.atomic import write_text_atomic
from tcl.engine.stopping import peer_failure
from tcl.errors import TclError
from tcl.run_folder import LATEST, MANIFEST, PREFIX, TRAINER_STATE, find_checkpoint

# Each process's position in streamed data (tcl.data.streaming), beside accelerate's per-process RNG states.
DATA_STATE = "data_state_rank{rank}.json"


def save_checkpoint(accelerator, output_dir: str | Path, step: int, trainer_state: dict[str, Any],
                    keep_last: int, config_yaml: str, data_state: dict[str, Any] | None = None) -> Path:
    """Saves the full training state as ``checkpoint-<step>`` (every process must call this); ``data_state``: this
    process's position in streamed data (``data_state_rank<r>.json``)."""
    output_dir = Path(output_dir)
    final = output_dir / f"{PREFIX}{step:08d}"
    tmp = output_dir / f".tmp-{PREFIX}{step:08d}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if data_state is not None:
            (tmp / DATA_STATE.format(rank=accelerator.process_index)).write_text(json.dumps(data_state))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2))
            (tmp / "config.yaml").write_text(config_yaml)
            (tmp / MANIFEST).write_text(json.dumps({p.name: p.stat().st_size for p in sorted(tmp.iterdir())
                                                    if p.is_file()}, indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            write_text_atomic(output_dir / LATEST, final.name)
    except Exception as error:  # OSError, and what torch / safetensors raise for the same failures
        shutil.rmtree(tmp, ignore_errors=True)
        if peer_failure(error):  # a collective of the save that another process never joined: the trainer says so
            raise
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


def load_data_state(path: Path, rank: int) -> dict[str, Any]:
    """Process ``rank``'s position in streamed data, saved in checkpoint ``path``."""
    file = path / DATA_STATE.format(rank=rank)
    if not file.is_file():
        raise TclError(f"{file} is missing: {path} holds no position in the stream for process {rank} (written by "
                       "another number of processes, or before the run streamed its data). Resume with the launch "
                       "and data.pretrain_source that wrote it.")
    return json.loads(file.read_text())


def load_checkpoint(accelerator, path: Path) -> dict[str, Any]:
    """Restores the full training state and returns the trainer state (epoch, batch, step)."""
    try:
        accelerator.load_state(str(path))
        return json.loads((path / TRAINER_STATE).read_text())
    except (RuntimeError, OSError, ValueError, EOFError) as error:  # what torch / safetensors raise on bad bytes
        raise TclError(f"checkpoint {path} could not be loaded ({type(error).__name__}: {str(error)[:200]}). "
                       "Resume from an earlier checkpoint folder, or with --resume latest-intact.") from None
