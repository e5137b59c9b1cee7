"""The accelerate set-up: precision, DDP options, trackers, and the checks a distributed run needs."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch

from tcl.config import Config, validate
from tcl.engine.run_lock import hold_output_folder
from tcl.errors import ConfigError
from tcl.run_folder import folder_start

logger = logging.getLogger(__name__)

# DeepSpeed (imported by accelerate when it checks for it) probes for an accelerator and prints a warning on
# stdout when it finds only the CPU; say so up front. A GPU machine, or a launcher's own setting, is left alone.
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


def build_accelerator(config: Config):
    """An Accelerator for this config (launcher settings such as DeepSpeed come from ``accelerate launch``)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    precision = resolve_precision(config.train.mixed_precision, launcher,
                                  torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if precision == "fp16" and not torch.cuda.is_available():
        named_by = "the launcher" if config.train.mixed_precision == "auto" else "train.mixed_precision"
        raise ConfigError(f"fp16 (named by {named_by}) needs a GPU; use bf16 on CPU (or no).")
    if precision == "no" and torch.cuda.is_available():
        # fp32 on a GPU: TensorFloat-32 matmuls and convolutions where the GPU has them (Ampere on), fp32 storage.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    logger.info("precision %s (train.mixed_precision %s, launcher %s)", "fp32" if precision == "no" else precision,
                config.train.mixed_precision, launcher or "none")
    # The queues are identical on every rank by construction: re-broadcasting 2 x 256 x 65,536 floats from rank 0
    # every forward (DDP's default) would only cost time.
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    # Without CUDA: cpu=True makes a torchrun-launched run use gloo across CPU processes. DeepSpeed must not be
    # overridden that way; it needs the gloo backend named explicitly, or accelerate sees no process group.
    use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    gloo = use_deepspeed and not torch.cuda.is_available() and "LOCAL_RANK" in os.environ
    handlers = [ddp, process_group_kwargs(config, backend="gloo" if gloo else None)]
    # DeepSpeed's own bf16 casts every parameter, the momentum encoders' too (an EMA of momentum 0.995 in bf16 leaves
    # most entries where they were), and expects bf16 inputs. Its torch autocast instead keeps the parameters in fp32
    # and runs the matmuls in bf16, as DDP's mixed precision does: accelerate is told "no", DeepSpeed autocasts.
    deepspeed_autocast = use_deepspeed and precision == "bf16"
    accelerator = Accelerator(cpu=not torch.cuda.is_available() and not use_deepspeed,
                              mixed_precision="no" if deepspeed_autocast else precision,
                              gradient_accumulation_steps=config.train.grad_accum_steps, log_with="tensorboard",
                              project_dir=config.train.output_dir, kwargs_handlers=handlers,
                              step_scheduler_with_optimizer=False)
    if deepspeed_autocast:
        accelerator.state.deepspeed_plugin.deepspeed_config["torch_autocast"] = {"enabled": True,
                                                                                 "dtype": "bfloat16"}
    return accelerator


def resolve_precision(setting: str, launcher: str | None, gpu_bf16: bool) -> str:
    """The precision a run trains in: ``setting`` (``train.mixed_precision``) unless it is ``auto``, which takes
    the launcher's bf16/fp16 when it names one (``launcher``: ``ACCELERATE_MIXED_PRECISION``, which accelerate
    launch sets to "no" when nothing is named), else bf16 on a GPU that supports it, else "no" (fp32)."""
    if setting != "auto":
        return setting
    if launcher in ("bf16", "fp16"):
        return launcher
    return "bf16" if gpu_bf16 else "no"


def process_group_kwargs(config: Config, backend: str | None = None):
    """The process group's settings: the timeout after which a collective that waits for a dead or stuck process
    fails (``train.process_group_timeout_s``, for gloo and NCCL alike), and the backend when it must be named."""
    from accelerate import InitProcessGroupKwargs

    return InitProcessGroupKwargs(backend=backend, timeout=timedelta(seconds=config.train.process_group_timeout_s))


def check_distributed_setup(accelerator, config: Config) -> None:
    """Refuses set-ups that would silently break training: ZeRO-3 and a batch/queue mismatch."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and int(plugin.zero_stage) >= 3:
        raise ConfigError("DeepSpeed ZeRO-3 partitions parameters across processes, so the momentum encoders' EMA "
                          "update would read and write shards instead of whole weights (silently wrong teachers). "
                          "Use ZeRO-1/2 (configs/accelerate/deepspeed_zero2.yaml) or DDP.")
    if plugin is not None:
        # Batches are not prepared by accelerate here (our sampler shards them), so DeepSpeed cannot infer "auto".
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.train.batch_size
    if plugin is not None and accelerator.mixed_precision == "fp16":
        logger.warning("DeepSpeed's fp16 casts the whole module, momentum copy included; the EMA then runs in fp16 "
                       "(bf16 keeps fp32 parameters under DeepSpeed's autocast)")
    # The config was validated for WORLD_SIZE; the launcher's real process count is known only now.
    validate(config, "the launched run", accelerator.num_processes)


def share_from_main(accelerator):
    """A function that returns, on every process, the value the main process passed it (identity on one process)."""
    if accelerator.num_processes == 1:
        return lambda value: value
    from accelerate.utils import broadcast_object_list

    return lambda value: broadcast_object_list([value], from_process=0)[0]


def evaluation_shard(accelerator):
    """This process's share of an evaluation shared by every process of the run (``tcl.evaluation.sharding``)."""
    from tcl.evaluation.sharding import Shard

    if accelerator.num_processes == 1:
        return Shard()
    return Shard(accelerator.process_index, accelerator.num_processes,
                 lambda tensor: accelerator.reduce(tensor, reduction="sum"))


def feature_gather(accelerator):
    """The queue's gather: all processes' [B, d] features concatenated in rank order (no gradient)."""
    if accelerator.num_processes == 1:
        return lambda tensor: tensor

    def gather(tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    return gather


def average_batchnorm_statistics(accelerator, model) -> None:
    """Averages BatchNorm's running means and variances over the processes (after each optimizer step).

    Each process normalises its own batch, so these buffers would drift apart between processes (and DeepSpeed does
    not broadcast buffers): averaged, every process holds the same model, as with one process. PyTorch has no
    SyncBatchNorm on the CPU, and the batch statistics of a training step stay per process, as DDP's are.
    """
    if accelerator.num_processes == 1:
        return
    buffers = [buffer for module in unwrap(accelerator, model).modules()
               if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats
               for buffer in (module.running_mean, module.running_var)]
    if not buffers:
        return
    flat = accelerator.reduce(torch.cat([buffer.reshape(-1) for buffer in buffers]), reduction="mean")
    for buffer, value in zip(buffers, flat.split([buffer.numel() for buffer in buffers])):
        buffer.copy_(value.view_as(buffer))


def unwrap(accelerator, model):
    return accelerator.unwrap_model(model)


def peak_memory_mb(accelerator) -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def to_device(batch, device):
    """A batch (tensors, dicts of them, objects with ``to``) on ``device``, copied without waiting: the loader pins
    its memory when a GPU is present, so the copy overlaps the step; other values pass through."""
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, torch.Tensor) or hasattr(batch, "to"):
        return batch.to(device, non_blocking=True)
    return batch


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """torch's deterministic algorithms (``train.deterministic``) for the duration of a run, warning where an
    operation has none; a setting already on stays on, and the previous one comes back afterwards (runs in one
    process one after the other, as in the demo and the tests)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled or previous, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def run_training(args: argparse.Namespace, config: Config, train: Callable[[argparse.Namespace, Config, Any], int]
                 ) -> int:
    """What pretraining and fine-tuning share around their work: torch's deterministic setting
    (``train.deterministic``), the accelerator and its distributed checks, and the output folder held for the run
    (started as --resume and --overwrite say); ``train(args, config, accelerator)`` does the rest."""
    with deterministic_algorithms(config.train.deterministic):
        accelerator = build_accelerator(config)
        check_distributed_setup(accelerator, config)
        with hold_output_folder(config.train.output_dir, accelerator.is_main_process, share_from_main(accelerator),
                                folder_start(args.resume, args.overwrite)):
            return train(args, config, accelerator)
