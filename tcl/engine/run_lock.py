"""One run per output folder: a second run started in a folder that a live run writes to stops at once.

Without it two runs in one ``train.output_dir`` interleave their ``metrics.jsonl`` and prune each other's
checkpoints. The lock is an OS file lock (``filelock``, ``flock`` on POSIX) held by the main process for the whole
run, so the operating system releases it when that process ends in any way, SIGKILL included: a lock left by a
killed run is recognised as stale simply because it can be taken again. Beside it, ``run.lock.json`` names the
holder (pid, host, start time, command) for the message a second run prints.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from tcl.errors import TclError

logger = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
HOLDER_FILE = "run.lock.json"


class OutputFolderBusy(TclError):
    """Another live run holds the output folder."""


@contextmanager
def hold_output_folder(folder: str | Path, is_main_process: bool = True,
                       share=lambda problem: problem) -> Iterator[None]:
    """Holds ``folder`` for this run (only the main process takes the lock; ``share`` hands its verdict to every
    process, so that all of them stop together); raises ``OutputFolderBusy`` naming the run that holds it."""
    folder = Path(folder)
    lock, problem, created = None, None, not folder.exists()
    if is_main_process:
        lock, problem = _acquire(folder)
    problem = share(problem)
    if problem:
        raise OutputFolderBusy(problem)
    try:
        yield
    finally:
        if lock is not None:
            (folder / HOLDER_FILE).unlink(missing_ok=True)
            lock.release()
            if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
                # A run that stopped before writing anything (a config or data error) leaves no folder behind.
                (folder / LOCK_FILE).unlink(missing_ok=True)
                folder.rmdir()


def _acquire(folder: Path) -> tuple[FileLock | None, str | None]:
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_FILE), timeout=0)
    holder_path = folder / HOLDER_FILE
    try:
        lock.acquire()
    except Timeout:
        return None, (f"{folder} is in use by another run ({_describe(holder_path)}). Wait for it to finish, stop "
                      f"it, or give this run another train.output_dir.")
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
