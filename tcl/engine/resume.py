"""Resuming a run: the checkpoint to continue from, checked against the configuration before anything is written.

A resumed run must be the same run: another model width fails deep inside the state loading, another batch size
skips samples or breaks the queue a few steps later, another objective is accepted silently. Only settings that cap,
extend or observe a run may change (``CHANGEABLE``); any other difference stops the run with the list of them,
before the run's ``config.yaml`` is overwritten. The metrics log then drops the lines of steps after the checkpoint
(written by the interrupted run), so that it holds each step once.

A preempted job may come back on another number of processes. Each checkpoint records the processes, per-process
batch and accumulation that wrote it (``world``). A run continues on another number of processes only when every
optimizer step still holds the same samples: the same global batch (per-process batch x processes) and the same
accumulation, so that ``train.batch_size`` is the one setting that changes. The sampler then cuts the same seeded
permutation into the same global batches, the epoch goes on at the same batch, every sample of it is seen once, and
the schedule counts the same optimizer steps. Anything else is refused before anything is written, with the setting
that would continue the run. (Changing the accumulation instead would change what enters the queues: only a step's
first micro-batch is enqueued.) DeepSpeed partitions its optimizer state over the processes, and streamed shards
keep a position per process (``tcl.data.streaming``), so such checkpoints resume on as many processes as wrote them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from tcl.atomic import write_text_atomic
from tcl.config import Config
from tcl.errors import TclError
from tcl.run_folder import TRAINER_STATE, find_checkpoint

# Settings a resumed run may change: how long it runs, how often it saves, logs and evaluates, how long it waits
# for the other processes, and how it loads batches; none of them changes what the steps compute.
CHANGEABLE = ("train.max_steps", "train.epochs", "train.save_every", "train.keep_last", "train.log_every",
              "train.log_sample_keys", "train.output_dir", "train.max_nonfinite_steps", "train.process_group_timeout_s", "data.num_workers",
              "eval.")
RUN_CONFIG = "config.yaml"
logger = logging.getLogger(__name__)
# Changes with the number of processes when the global batch is kept (see above).
PER_PROCESS = ("train.batch_size",)


def world_of(accelerator, config: Config) -> dict[str, Any]:
    """How many processes run, with which per-process batch and accumulation, and whether under DeepSpeed."""
    return {"processes": accelerator.num_processes, "batch_size": config.train.batch_size,
            "grad_accum_steps": config.train.grad_accum_steps,
            "deepspeed": accelerator.state.deepspeed_plugin is not None,
            "streamed": config.data.pretrain_source == "webdataset"}


def checkpoint_to_resume(config: Config, resume: str, world: dict[str, Any] | None = None) -> Path:
    """The checkpoint ``--resume`` names, after checking that ``config`` differs from the run's own only in
    ``CHANGEABLE`` settings, and that ``world`` (``world_of``; None: not checked) can continue it (TclError listing
    what differs otherwise)."""
    path = find_checkpoint(config.train.output_dir, resume)
    if path.parent.resolve() != Path(config.train.output_dir).resolve():
        raise TclError(f"--resume {resume}: that checkpoint belongs to the run in {path.parent}, not to "
                       f"train.output_dir {config.train.output_dir}. Continue it there (train.output_dir="
                       f"{path.parent}), or start a new run from its weights with --init {path}.")
    saved_world = json.loads((path / TRAINER_STATE).read_text()).get("world")
    if saved_world is None and world is not None and world["processes"] > 1:
        logger.warning("%s does not record how many processes wrote it (written by an older version): resume it on "
                       "as many as wrote it", path)
    same_steps = saved_world is not None and world is not None and _check_world(saved_world, world, path, resume)
    saved = path.parent / RUN_CONFIG
    if saved.is_file():
        differences = config_differences(yaml.safe_load(saved.read_text()) or {}, config.to_dict())
        if same_steps:
            differences = [d for d in differences if d[0] not in PER_PROCESS]
        if differences:
            listed = "; ".join(f"{key}: {old!r} in the run, {new!r} now" for key, old, new in differences)
            raise TclError(f"--resume {resume}: the configuration differs from the run's ({saved}) in settings a "
                           f"resumed run cannot change: {listed}. Resume with the run's settings, or start a new run "
                           "in another train.output_dir.")
    return path


def _global_batch(world: dict[str, Any]) -> int:
    return world["processes"] * world["batch_size"]


def _check_world(saved: dict[str, Any], now: dict[str, Any], path: Path, resume: str) -> bool:
    """True when ``now`` continues the steps ``saved`` took (the same global batch and accumulation); raises TclError
    naming the setting that would when it cannot."""
    before, after = saved["processes"], now["processes"]
    if saved.get("deepspeed") != now["deepspeed"]:
        launcher = "with DeepSpeed" if saved.get("deepspeed") else "without DeepSpeed"
        raise TclError(f"--resume {resume}: {path} was written {launcher}; resume it with the launcher configuration "
                       "that wrote it (accelerate launch --config_file ...).")
    if before != after and now["deepspeed"]:
        raise TclError(f"--resume {resume}: {path} was written by {before} DeepSpeed processes, whose ZeRO optimizer "
                       f"state is split {before} ways; this launch has {after}. Resume it with accelerate launch "
                       f"--num_processes {before}.")
    if before != after and now.get("streamed"):
        raise TclError(f"--resume {resume}: {path} was written by {before} processes streaming shards, each with its "
                       f"own position in the stream; this launch has {after}. Resume it with accelerate launch "
                       f"--num_processes {before}.")
    samples_per_step = _global_batch(saved) * saved["grad_accum_steps"]
    if now["grad_accum_steps"] == saved["grad_accum_steps"] and _global_batch(now) == _global_batch(saved):
        if before != after:
            logger.info("%s: written by %d process(es) of batch %d, continued on %d of batch %d: the same %d samples "
                        "per optimizer step", path.name, before, saved["batch_size"], after, now["batch_size"],
                        samples_per_step)
        return True
    if before == after:
        return False  # the configuration check names the setting that changed
    if _global_batch(saved) % after == 0:
        settings = f"train.batch_size={_global_batch(saved) // after}"
        if now["grad_accum_steps"] != saved["grad_accum_steps"]:
            settings += f" train.grad_accum_steps={saved['grad_accum_steps']}"
        way = (f"Keep the global batch: resume with --resume {resume} {settings} on these {after} process(es), or "
               f"resume on {before} processes.")
    else:
        way = (f"No per-process batch splits the global batch {_global_batch(saved)} over {after} processes: resume "
               f"on {before} processes, or on a number of processes that divides {_global_batch(saved)}.")
    raise TclError(f"--resume {resume}: {path} was written by {before} process(es) of batch {saved['batch_size']} "
                   f"with {saved['grad_accum_steps']} accumulation step(s) ({samples_per_step} samples per optimizer "
                   f"step); "
                   f"{after} process(es) of batch {now['batch_size']} with {now['grad_accum_steps']} would take "
                   f"{_global_batch(now) * now['grad_accum_steps']}, so the schedule and the position in the epoch "
                   f"would no longer mean what they meant. {way}")


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
