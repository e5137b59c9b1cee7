"""Pretraining with accelerate: one script for one CPU, one GPU, many GPUs (DDP) and DeepSpeed ZeRO-1/2.

    python scripts/pretrain.py --config configs/pretrain_tiny.yaml [section.key=value ...]
    accelerate launch --config_file configs/accelerate/ddp_cpu.yaml scripts/pretrain.py --config ...
    python scripts/pretrain.py --config ... --resume latest

The loop is visible here: data → forward (momentum update and enqueue once per optimizer step) → backward →
clip → step → schedule; checkpoints every ``train.save_every`` steps and at each epoch end; logs to a JSONL file,
TensorBoard and a tqdm bar; a loss-curve plot and a one-line summary at the end.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

import torch
import yaml

from tcl.config import Config, load_config, save_config
from tcl.data.bad_samples import SkipReport
from tcl.data.builders import build_loader, build_pretrain_dataset, build_tokenizer, check_data_root, pretrain_collator
from tcl.engine.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from tcl.engine.metrics import MetricsLogger, plot_losses
from tcl.engine.optim import alpha_at, build_optimizer, build_scheduler
from tcl.engine.runtime import build_accelerator, check_distributed_setup, feature_gather, peak_memory_mb, unwrap
from tcl.errors import TclError, run_command
from tcl.models import SpecialTokens, TCLPretrainModel

logger = logging.getLogger("tcl.pretrain")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tcl pretrain", description="TCL pretraining")
    parser.add_argument("--config", default="configs/pretrain_tiny.yaml", help="YAML config")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder to continue from")
    parser.add_argument("--init", default=None, help="checkpoint folder of ours to start from (continued pretraining)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--dump-rank-states", action="store_true",
                        help="also write every rank's final model state (tests of distributed consistency)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(run, args, args.debug)


class _StopRequest:
    """SIGTERM/SIGINT ask the loop to write a checkpoint and stop at the next optimizer step."""

    def __init__(self):
        self.requested = False
        self.previous = {signum: signal.signal(signum, self._handle) for signum in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame) -> None:
        logger.warning("received %s: saving a checkpoint and stopping", signal.Signals(signum).name)
        self.requested = True

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(config.train.deterministic or previous, warn_only=True)
    try:
        return _run(args, config)
    finally:
        torch.use_deterministic_algorithms(previous)


def _run(args: argparse.Namespace, config: Config) -> int:
    accelerator = build_accelerator(config)
    check_distributed_setup(accelerator, config)
    check_data_root(config)
    tokenizer = build_tokenizer(config)
    dataset = build_pretrain_dataset(config)
    loader = build_loader(dataset, pretrain_collator(config, tokenizer), config.train.batch_size, shuffle=True,
                          num_workers=config.data.num_workers, seed=config.train.seed, drop_last=True,
                          rank=accelerator.process_index, world_size=accelerator.num_processes)
    steps_per_epoch = loader.sampler.batches_per_epoch() // config.train.grad_accum_steps
    if steps_per_epoch == 0:
        raise TclError(f"{len(dataset)} samples are fewer than one optimizer step of train.batch_size "
                       f"{config.train.batch_size} x {accelerator.num_processes} processes x "
                       f"{config.train.grad_accum_steps} accumulation steps. Use a smaller batch or more data.")
    # Same seed on every rank for the initial weights and queues, then TCL's seed + rank for dropout and masking.
    torch.manual_seed(config.train.seed)
    model = build_model(config, tokenizer, args.init)
    torch.manual_seed(config.train.seed + accelerator.process_index)
    optimizer = build_optimizer(model, config.train)
    scheduler = build_scheduler(optimizer, steps_per_epoch * config.train.epochs, config.train)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    unwrap(accelerator, model).gather = feature_gather(accelerator)
    output_dir = Path(config.train.output_dir)
    if accelerator.is_main_process:
        save_config(config, output_dir / "config.yaml")
    state = {"epoch": 0, "batch": 0, "step": 0}
    if args.resume:
        path = find_checkpoint(output_dir, args.resume)
        state = load_checkpoint(accelerator, path)
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, state["step"], state["epoch"],
                    state["batch"])
    trainer = Trainer(config, accelerator, model, optimizer, scheduler, loader, steps_per_epoch, state,
                      SkipReport(dataset.skipped_at_indexing))
    code = trainer.fit()
    if args.dump_rank_states:
        dump_rank_state(accelerator, model, output_dir / "rank_states")
    return code


def dump_rank_state(accelerator, model, folder: Path) -> None:
    """Writes this rank's model state (online, momentum, queues) to ``rank<r>.safetensors``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = unwrap(accelerator, model).state_dict()
    unique = {}
    seen = set()
    for name, tensor in state.items():  # tied weights are stored once
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            unique[name] = tensor.detach().float().cpu().contiguous()
    save_file(unique, str(folder / f"rank{accelerator.process_index}.safetensors"))


def build_model(config: Config, tokenizer, init: str | None) -> TCLPretrainModel:
    special = SpecialTokens(pad=tokenizer.pad_id, cls=tokenizer.cls_id, mask=tokenizer.mask_id)
    vocab_size = config.model.vocab_size or len(tokenizer)
    model = TCLPretrainModel(config.model, config.loss, vocab_size, special)
    if init:
        from tcl.engine.weights import load_model_weights

        load_model_weights(model, init)
    if config.train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


class Trainer:
    """The pretraining loop and its bookkeeping."""

    def __init__(self, config: Config, accelerator, model, optimizer, scheduler, loader, steps_per_epoch: int,
                 state: dict, skips: SkipReport):
        self.config, self.accelerator = config, accelerator
        self.model, self.optimizer, self.scheduler, self.loader = model, optimizer, scheduler, loader
        self.steps_per_epoch, self.state, self.skips = steps_per_epoch, state, skips
        self.output_dir = Path(config.train.output_dir)
        self.total_steps = steps_per_epoch * config.train.epochs
        self.max_steps = min(config.train.max_steps or self.total_steps, self.total_steps)
        self.metrics = MetricsLogger(accelerator, self.output_dir)
        self.stop = _StopRequest()
        self.last_checkpoint: Path | None = None

    def fit(self) -> int:
        start = time.perf_counter()
        samples_before = self.state["step"]
        bar = self.metrics.progress(self.max_steps, self.state["step"])
        while self.state["step"] < self.max_steps and self.state["epoch"] < self.config.train.epochs:
            finished_epoch = self._epoch(bar)
            if self.stop.requested:
                break
            if finished_epoch:
                logger.info("epoch %d done: %s", self.state["epoch"], self.skips.format())
                self.state.update(epoch=self.state["epoch"] + 1, batch=0)
                self._checkpoint()
        if self.last_checkpoint is None or int(self.last_checkpoint.name.split("-")[-1]) != self.state["step"]:
            self._checkpoint()
        bar.close()
        self.stop.restore()
        elapsed = time.perf_counter() - start
        self._finish(elapsed, self.state["step"] - samples_before)
        return 0

    def _epoch(self, bar) -> bool:
        """Runs (the rest of) the current epoch; returns whether it reached the end of the epoch."""
        cfg, accumulation = self.config, self.config.train.grad_accum_steps
        self.loader.sampler.set_epoch(self.state["epoch"], self.state["batch"])
        step_start = time.perf_counter()
        # Whole optimizer steps only: a remainder of micro-batches at the epoch end would shift the accumulation
        # windows of the next epoch.
        usable = self.steps_per_epoch * accumulation
        for batch in self.loader:
            micro = self.state["batch"]
            if micro >= usable:
                break
            boundary = micro % accumulation == 0
            alpha = alpha_at(self.state["step"], self.steps_per_epoch, cfg.loss.alpha)
            output = self._micro_step(batch, alpha, boundary)
            self.skips.update(batch)
            self.state["batch"] = micro + 1
            if (micro + 1) % accumulation:
                continue
            self.state["step"] += 1
            seconds = time.perf_counter() - step_start
            step_start = time.perf_counter()
            self.metrics.log_step(self.state["step"], output, self.scheduler.get_last_lr()[0], alpha,
                                  cfg.train.batch_size * accumulation * self.accelerator.num_processes / seconds, bar)
            if self._should_save():
                self._checkpoint()
            if self.state["step"] >= self.max_steps or self.stop.requested:
                return False
        return True

    def _micro_step(self, batch: dict, alpha: float, boundary: bool):
        device = self.accelerator.device
        with self.accelerator.accumulate(self.model):
            output = self.model(batch["image"].to(device), batch["image_aug"].to(device),
                                batch["input_ids"].to(device), batch["attention_mask"].to(device), alpha=alpha,
                                step_boundary=boundary)
            self.accelerator.backward(output.loss)
            if self.accelerator.sync_gradients and self.config.train.grad_clip:
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return output

    def _should_save(self) -> bool:
        every = self.config.train.save_every
        return bool(every) and self.state["step"] % every == 0 or self.stop.requested

    def _checkpoint(self) -> None:
        text = yaml.safe_dump(self.config.to_dict(), sort_keys=False)
        state = {**self.state, "skipped": dict(self.skips.at_loading)}
        self.last_checkpoint = save_checkpoint(self.accelerator, self.output_dir, self.state["step"], state,
                                               self.config.train.keep_last, text)

    def _finish(self, elapsed: float, steps: int) -> None:
        self.metrics.close()
        if not self.accelerator.is_main_process:
            return
        plot = plot_losses(self.output_dir / "metrics.jsonl", self.output_dir / "loss_curves.png")
        samples = steps * self.config.train.batch_size * self.config.train.grad_accum_steps * \
            self.accelerator.num_processes
        print(f"pretraining done: {self.state['step']} steps on {self.accelerator.num_processes} process(es), "
              f"{samples / max(elapsed, 1e-9):.1f} samples/s, "
              f"peak memory {peak_memory_mb(self.accelerator):.0f} MB, checkpoint {self.last_checkpoint}, "
              f"plot {plot}, {self.skips.format()}")


if __name__ == "__main__":
    sys.exit(main())
