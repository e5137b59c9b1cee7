"""One run per output folder: a second run started in a folder that a live run writes to stops at once, and a new run
started in a folder that holds a finished or interrupted run stops before writing anything.

Without it two runs in one ``train.output_dir`` interleave their ``metrics.jsonl`` and prune each other's
checkpoints. The lock is an OS file lock (``filelock``, ``flock`` on POSIX) held by the main process for the whole
run, so the operating system releases it when that process ends in any way, SIGKILL included: a lock left by a
killed run is recognised as stale simply because it can be taken again. Beside it, ``run.lock.json`` names the
holder (pid, host, start time, command) for the message a second run prints.

A folder that already holds a run (checkpoints, the ``latest`` pointer, its ``config.yaml`` or ``metrics.jsonl``)
takes only ``--resume`` (the same run, continued) or ``--overwrite`` (that run's files deleted first, other files
left): otherwise a new run would replace some of the old run's checkpoints and config and append to its metrics,
leaving a folder that is neither run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

from filelock import FileLock, Timeout

from tcl.data.tokenizer import RUN_TOKENIZER
from tcl.errors import TclError
from tcl.evaluation.answers import ANSWER_LIST
from tcl.run_folder import LATEST, PREFIX, STARTS

logger = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
HOLDER_FILE = "run.lock.json"
# What a run leaves in its folder from its first step on: checkpoints (complete or not), the pointer, config, log.
RUN_MARKERS = ("config.yaml", "metrics.jsonl", LATEST)
# Everything pretraining, fine-tuning and their evaluations write into a run folder: what --overwrite deletes (other
# files stay where they are).
RUN_OUTPUTS = (*RUN_MARKERS, f"{PREFIX}*", f".tmp-{PREFIX}*", "loss_curves.png", "tensorboard", "rank_states",
               "retrieval*.json", "eval_results.json", ANSWER_LIST, "vqa_results_*.json", "vqa_scores_*.json",
               RUN_TOKENIZER)


class OutputFolderBusy(TclError):
    """Another live run holds the output folder."""


class OutputFolderHoldsARun(TclError):
    """A new run was started in a folder that holds another run's files."""


@contextmanager
def hold_output_folder(folder: str | Path, is_main_process: bool = True,
                       share=lambda problem: problem, start: str = "new") -> Iterator[None]:
    """Holds ``folder`` for this run (only the main process takes the lock; ``share`` hands its verdict to every
    process, so that all of them stop together); raises ``OutputFolderBusy`` naming the run that holds it, or
    ``OutputFolderHoldsARun`` when a ``new`` run finds another run's files there (``overwrite`` deletes them
    first)."""
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, not {start!r}")
    folder = Path(folder)
    lock, problem, created = None, None, not folder.exists()
    if is_main_process:
        lock, problem = _acquire(folder)
        if problem is None and start != "resume":
            problem = _claim(folder, overwrite=start == "overwrite")
    problem = share(problem)
    if problem:
        if lock is not None:
            _release(folder, lock, created)
        error, message = problem
        raise error(message)
    try:
        yield
    finally:
        if lock is not None:
            _release(folder, lock, created)


def _release(folder: Path, lock: FileLock, created: bool) -> None:
    (folder / HOLDER_FILE).unlink(missing_ok=True)
    lock.release()
    if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
        # A run that stopped before writing anything (a config or data error) leaves no folder behind.
        (folder / LOCK_FILE).unlink(missing_ok=True)
        folder.rmdir()


def previous_run(folder: Path) -> list[str]:
    """The names in ``folder`` that show a run was started there (empty for an empty or run-less folder)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.name in RUN_MARKERS or p.name.startswith((PREFIX, f".tmp-{PREFIX}")))


def run_outputs(folder: Path) -> list[Path]:
    """The entries of ``folder`` that a run wrote (``RUN_OUTPUTS``)."""
    return [entry for entry in sorted(folder.iterdir()) if any(fnmatch(entry.name, p) for p in RUN_OUTPUTS)]


def _claim(folder: Path, overwrite: bool) -> tuple[type[TclError], str] | None:
    """None when a new run may start in ``folder`` (deleting the run there first with ``overwrite``), else why not."""
    found = previous_run(folder)
    if not found:
        return None
    if overwrite:
        logger.warning("%s: --overwrite deletes the run there (%s)", folder, ", ".join(found[:4]))
        for entry in run_outputs(folder):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        return None
    shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    return OutputFolderHoldsARun, (f"{folder} already holds a run ({shown}); a new run there would mix its "
                                   f"checkpoints and logs with that run's. Continue that run with --resume latest, "
                                   f"give this run another train.output_dir, or pass --overwrite to delete that run "
                                   f"first.")


def _acquire(folder: Path) -> tuple[FileLock | None, tuple[type[TclError], str] | None]:
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_FILE), timeout=0)
    holder_path = folder / HOLDER_FILE
    try:
        lock.acquire()
    except Timeout:
        return None, (OutputFolderBusy, f"{folder} is in use by another run ({_describe(holder_path)}). Wait for it "
                                        f"to finish, stop it, or give this run another train.output_dir.")
    if holder_path.is_file():  # the lock was free, so whoever wrote this has ended without cleaning up
        logger.info("%s: taking over from a run that ended without releasing the folder (%s)", folder,
                    _describe(holder_path))
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv)}
    holder_path.write_text(json.dumps(holder) + "\n")
    return lock, None


def _describe(holder_path: Path) -> str:
    try:
        holder = json.loads(holder_path.read_text())
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: {holder['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its details are not recorded"
