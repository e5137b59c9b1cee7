"""Resuming a run: the checkpoint to continue from, checked against the configuration before anything is written.

A resumed run must be the same run: another model width fails deep inside the state loading, another batch size
skips samples or breaks the queue a few steps later, another objective is accepted silently. Only settings that cap,
extend or observe a run may change (``CHANGEABLE``); any other difference stops the run with the list of them,
before the run's ``config.yaml`` is overwritten. The metrics log then drops the lines of steps after the checkpoint
(written by the interrupted run), so that it holds each step once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tcl.atomic import write_text_atomic
from tcl.config import Config
from tcl.run_folder import find_checkpoint
from tcl.errors import TclError

# Settings a resumed run may change: how long it runs, how often it saves, logs and evaluates, and how it loads
# batches; none of them changes what the steps compute.
CHANGEABLE = ("train.max_steps", "train.epochs", "train.save_every", "train.keep_last", "train.log_every",
              "train.output_dir", "train.max_nonfinite_steps", "data.num_workers", "eval.")
RUN_CONFIG = "config.yaml"


def checkpoint_to_resume(config: Config, resume: str) -> Path:
    """The checkpoint ``--resume`` names, after checking that ``config`` differs from the run's own only in
    ``CHANGEABLE`` settings (TclError listing the differences otherwise)."""
    path = find_checkpoint(config.train.output_dir, resume)
    saved = path.parent / RUN_CONFIG
    if saved.is_file():
        differences = config_differences(yaml.safe_load(saved.read_text()) or {}, config.to_dict())
        if differences:
            listed = "; ".join(f"{key}: {old!r} in the run, {new!r} now" for key, old, new in differences)
            raise TclError(f"--resume {resume}: the configuration differs from the run's ({saved}) in settings a "
                           f"resumed run cannot change: {listed}. Resume with the run's settings, or start a new run "
                           "in another train.output_dir.")
    return path


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) of every setting that differs and may not change on resume."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += config_differences(old, new, f"{name}.")
        elif old != new and not any(name == allowed or (allowed.endswith(".") and name.startswith(allowed))
                                    for allowed in CHANGEABLE):
            differences.append((name, old, new))
    return differences


def drop_metrics_after(metrics_file: Path, step: int) -> None:
    """Keeps the lines of ``metrics.jsonl`` up to ``step`` (the checkpoint's), so that a resumed run logs each step
    once; lines that are not JSON (a line cut by the interruption) go too."""
    if not metrics_file.is_file():
        return
    kept = []
    for line in metrics_file.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except (ValueError, AttributeError):
            continue
    write_text_atomic(metrics_file, "".join(f"{line}\n" for line in kept))
