"""Pretraining with accelerate: one script for one CPU, one GPU, many GPUs (DDP) and DeepSpeed ZeRO-1/2.

    python scripts/pretrain.py --config configs/pretrain_tiny.yaml [section.key=value ...]
    accelerate launch --config_file configs/accelerate/cpu_multiprocess.yaml scripts/pretrain.py --config ...
    python scripts/pretrain.py --config ... --resume latest

This module builds the data, model, optimizer and schedule; the loop itself (accumulation, clipping, checkpoints
every ``train.save_every`` steps and at each epoch end, JSONL/TensorBoard/tqdm feedback, loss plot, summary line)
is ``tcl.engine.trainer.Trainer``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from tcl.config import Config, save_config
from tcl.data.bad_samples import SkipReport
from tcl.data.builders import build_pretrain_loader, build_tokenizer, check_data_root
from tcl.data.tokenizer import save_run_tokenizer
from tcl.data.streaming import StreamLoader
from tcl.engine.checkpoint import load_checkpoint, load_data_state
from tcl.engine.metrics import SAMPLE_KEYS
from tcl.engine.evaluate_retrieval import results_name, retrieval_probe
from tcl.engine.optim import build_optimizer, build_scheduler
from tcl.engine.resume import checkpoint_to_resume, drop_metrics_after, world_of
from tcl.engine.runtime import evaluation_shard, feature_gather, run_training, to_device, unwrap
from tcl.engine.trainer import Trainer
from tcl.errors import TclError
from tcl.models import SpecialTokens, TCLPretrainModel
from tcl.models.pretrained import initialise_from_pretrained
from tcl.pretrained_parts import check_parts, config_parts

logger = logging.getLogger("tcl.pretrain")


def run(args: argparse.Namespace, config: Config) -> int:
    """The pretraining of ``tcl pretrain`` (``tcl.engine.commands.pretrain`` parses and checks its arguments and
    ``config`` first)."""
    check_parts(config_parts(config))
    return run_training(args, config, _train)


def _train(args: argparse.Namespace, config: Config, accelerator) -> int:
    # Before anything is written.
    resume_from = checkpoint_to_resume(config, args.resume, world_of(accelerator, config)) if args.resume else None
    check_data_root(config)
    tokenizer = build_tokenizer(config)
    loader = build_pretrain_loader(config, tokenizer, accelerator.process_index, accelerator.num_processes)
    dataset = loader.dataset
    steps_per_epoch = loader.sampler.batches_per_epoch() // config.train.grad_accum_steps
    if steps_per_epoch == 0:
        samples = loader.epoch_samples if isinstance(loader, StreamLoader) else len(dataset)
        raise TclError(f"{samples} samples per epoch are fewer than one optimizer step of train.batch_size "
                       f"{config.train.batch_size} x {accelerator.num_processes} processes x "
                       f"{config.train.grad_accum_steps} accumulation steps. Use a smaller batch or more data.")
    # Same seed on every rank for the initial weights and queues, then TCL's seed + rank for dropout and masking.
    torch.manual_seed(config.train.seed)
    model = build_model(config, tokenizer, args.init)
    torch.manual_seed(config.train.seed + accelerator.process_index)
    optimizer = build_optimizer(model, config.train)
    scheduler = build_scheduler(optimizer, steps_per_epoch * config.train.epochs, config.train, steps_per_epoch)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    unwrap(accelerator, model).gather = feature_gather(accelerator)
    output_dir = Path(config.train.output_dir)
    if accelerator.is_main_process:
        save_config(config, output_dir / "config.yaml")
        save_run_tokenizer(tokenizer, output_dir)
    state = {"epoch": 0, "batch": 0, "step": 0}
    if resume_from:
        state = load_checkpoint(accelerator, resume_from)
        if isinstance(loader, StreamLoader):
            loader.load_state_dict(load_data_state(resume_from, accelerator.process_index), str(resume_from))
        if accelerator.is_main_process:
            drop_metrics_after(output_dir / "metrics.jsonl", state["step"])
        drop_metrics_after(output_dir / SAMPLE_KEYS.format(rank=accelerator.process_index), state["step"])
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume_from, state["step"], state["epoch"],
                    state["batch"])
    probe = shared_probe(config, tokenizer, accelerator)
    trainer = Trainer(config, accelerator, model, optimizer, scheduler, loader, steps_per_epoch, state,
                      SkipReport(dataset.skipped_at_indexing), pretrain_step, name="pretraining",
                      evaluate=probe, eval_file=results_name(config))
    code = trainer.fit()
    if args.dump_rank_states:
        dump_rank_state(accelerator, model, output_dir / "rank_states")
    return code


def shared_probe(config: Config, tokenizer, accelerator):
    """The retrieval probe, each process loading its share of the set. All of them evaluate together, so they must
    agree on what there is to evaluate: a file that some nodes cannot see, or an image that one process cannot read,
    stops every process now with the message, instead of leaving the others in the evaluation's collectives."""
    probe, problem = None, None
    try:
        probe = retrieval_probe(config, tokenizer, evaluation_shard(accelerator))
    except TclError as error:
        problem = f"process {accelerator.process_index}: {error}"
    if accelerator.num_processes == 1:
        if problem:
            raise TclError(problem)
        return probe
    from accelerate.utils import gather_object

    found = gather_object([(problem, getattr(probe, "parts", None))])
    problems = [problem for problem, _ in found if problem]
    if problems:
        raise TclError("; ".join(problems))
    if len({parts for _, parts in found}) > 1:
        seen = ", ".join(f"process {rank}: {parts or 'no evaluation'}" for rank, (_, parts) in enumerate(found))
        raise TclError(f"the processes found different evaluation files ({seen}): eval.retrieval_file under "
                       f"data.root (and the instances file beside it) must be readable by every process.")
    return probe


def dump_rank_state(accelerator, model, folder: Path) -> None:
    """Writes this rank's model state (online, momentum, queues) to ``rank<r>.safetensors``, in its own dtypes."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = unwrap(accelerator, model).state_dict()
    unique = {}
    seen = set()
    for name, tensor in state.items():  # tied weights are stored once
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            unique[name] = tensor.detach().cpu().contiguous()
    save_file(unique, str(folder / f"rank{accelerator.process_index}.safetensors"))


def build_model(config: Config, tokenizer, init: str | None) -> TCLPretrainModel:
    special = SpecialTokens(pad=tokenizer.pad_id, cls=tokenizer.cls_id, mask=tokenizer.mask_id)
    vocab_size = config.model.vocab_size or len(tokenizer)
    swap_word_ids = [tokenizer.word_ids(words) for words in config.loss.swap_word_classes]
    model = TCLPretrainModel(config.model, config.loss, vocab_size, special, swap_word_ids or None)
    initialise_from_pretrained(model, config.model)
    if init:
        from tcl.models.saving import load_model_weights

        load_model_weights(model, init)
    if config.train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if config.train.compile:
        model.compile_encoders()
    return model


def pretrain_step(model, batch: dict, alpha: float, boundary: bool, device, step: int = 0):
    """One forward of the pretraining model on a collated batch (``step``: optimizer steps done so far, unused: the
    terms do not change over a run)."""
    batch = to_device(batch, device)
    return model(batch["image"], batch["image_aug"], batch["input_ids"], batch["attention_mask"], alpha=alpha,
                 step_boundary=boundary, grounding=batch.get("grounding"), regions=batch.get("regions"))

