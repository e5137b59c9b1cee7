"""The training loop shared by pretraining and fine-tuning: accumulation, clipping, checkpoints, feedback, signals.

A task supplies ``step_fn(model, batch, alpha, boundary, device, step) -> output`` where ``output`` has ``loss`` (with
gradient), ``losses`` and ``diagnostics`` (dicts of detached scalars); ``boundary`` is True for the first micro-batch
of each optimizer step (momentum updates and enqueues happen then).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import yaml

from tcl.atomic import write_json_atomic
from tcl.config import Config
from tcl.data.bad_samples import SkipReport
from tcl.engine.checkpoint import save_checkpoint
from tcl.engine.metrics import MetricsLogger, SampleKeyLog, chance_levels, headline, plot_losses
from tcl.engine.optim import alpha_at
from tcl.engine.resume import world_of
from tcl.engine.runtime import average_batchnorm_statistics, peak_memory_mb
from tcl.engine.step_guard import build_step_guard
from tcl.engine.stopping import StopRequest, peer_failure
from tcl.errors import TclError
from tcl.run_folder import find_checkpoint

logger = logging.getLogger(__name__)


class StepFn(Protocol):
    """One micro-batch's forward pass (``pretrain_step``, ``vqa_step``): the module's docstring says what it returns
    and what ``boundary`` means; ``step`` is the optimizer steps done so far (``state["step"]``)."""

    def __call__(self, model: Any, batch: dict, alpha: float, boundary: bool, device: torch.device, step: int
                 ) -> Any: ...


EvalFn = Callable[[Any], dict]


class Trainer:
    """The training loop and its bookkeeping, shared by pretraining and fine-tuning."""

    def __init__(self, config: Config, accelerator, model, optimizer, scheduler, loader, steps_per_epoch: int,
                 state: dict, skips: SkipReport, step_fn: StepFn, name: str = "training",
                 evaluate: EvalFn | None = None, eval_file: str = "eval_results.json"):
        self.config, self.accelerator = config, accelerator
        self.model, self.optimizer, self.scheduler, self.loader = model, optimizer, scheduler, loader
        self.steps_per_epoch, self.state, self.skips = steps_per_epoch, state, skips
        self.step_fn, self.name = step_fn, name
        self.output_dir = Path(config.train.output_dir)
        self.total_steps = steps_per_epoch * config.train.epochs
        self.max_steps = min(config.train.max_steps or self.total_steps, self.total_steps)
        self.samples_per_step = config.train.batch_size * config.train.grad_accum_steps * accelerator.num_processes
        self.metrics = MetricsLogger(accelerator, self.output_dir)
        self.key_log = SampleKeyLog(self.output_dir, accelerator.process_index) if config.train.log_sample_keys \
            else None
        self.stop = StopRequest()
        self.last_checkpoint: Path | None = None
        self.guard = build_step_guard(accelerator, config.train.grad_clip)
        self.nonfinite_skipped = 0  # as of the last log line
        # evaluate(unwrapped model) -> metrics, run by every process every eval.every steps and at the end.
        self.evaluate, self.eval_file, self.final_eval = evaluate, eval_file, None

    def fit(self) -> int:
        if self.accelerator.is_main_process:
            logger.info("%s: writing to %s (steps %d to %d)", self.name, self.output_dir, self.state["step"],
                        self.max_steps)
        start = time.perf_counter()
        steps_before = self.state["step"]
        bar = self.metrics.progress(self.max_steps, self.state["step"])
        self.log_start, self.steps_since_log = time.perf_counter(), 0
        try:
            self._loop(bar)
        except RuntimeError as error:
            if self.accelerator.num_processes == 1 or not peer_failure(error):
                raise
            raise TclError(self._peer_failure_message(error)) from error
        finally:
            bar.close()
            self.stop.restore()
        elapsed = time.perf_counter() - start
        self._finish(elapsed, self.state["step"] - steps_before)
        return 0

    def _loop(self, bar) -> None:
        """Epochs until the step limit or an agreed stop, a checkpoint of the last step, the final evaluation."""
        while self.state["step"] < self.max_steps and self.state["epoch"] < self.config.train.epochs:
            finished_epoch = self._epoch(bar)
            if self.stop.agreed:
                break
            if finished_epoch:
                logger.info("epoch %d done: %s", self.state["epoch"], self.skips.format())
                self.state.update(epoch=self.state["epoch"] + 1, batch=0)
                self._checkpoint()
        if self.last_checkpoint is None or int(self.last_checkpoint.name.split("-")[-1]) != self.state["step"]:
            self._checkpoint()
        if self.stop.agreed:  # a scheduler's grace period is short: the evaluation waits for the resumed run
            logger.info("stopping on request at step %d: no final evaluation", self.state["step"])
        else:
            self.final_eval = self._evaluate()

    def _peer_failure_message(self, error: RuntimeError) -> str:
        try:
            last = f"The last checkpoint is {find_checkpoint(self.output_dir, 'latest')}"
        except TclError:
            last = "No checkpoint was written yet"
        first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        return (f"process {self.accelerator.process_index} of {self.accelerator.num_processes}: a collective operation "
                f"failed after step {self.state['step']} ({first_line}): another process has died or has not "
                f"answered within train.process_group_timeout_s = {self.config.train.process_group_timeout_s} s. "
                f"{last}; once every process can run, continue with --resume latest.")

    def _epoch(self, bar) -> bool:
        """Runs (the rest of) the current epoch; returns whether it reached the end of the epoch."""
        cfg, accumulation = self.config, self.config.train.grad_accum_steps
        self.loader.sampler.set_epoch(self.state["epoch"], self.state["batch"])
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
            if self.key_log is not None:
                self.key_log.write(self.state["step"] + 1, micro, batch["sample_keys"])
            self.state["batch"] = micro + 1
            if (micro + 1) % accumulation:
                continue
            self.state["step"] += 1
            bar.update(1)
            self._check_in(output, alpha, bar)
            if self._should_save():
                self._checkpoint()
            every = cfg.eval.every
            if every and self.state["step"] % every == 0 and self.state["step"] < self.max_steps and \
                    not self.stop.agreed:
                self._evaluate()
            if self.state["step"] >= self.max_steps or self.stop.agreed:
                return False
        return True

    def _check_in(self, output, alpha: float, bar) -> None:
        """Every ``train.log_every`` optimizer steps and at the last one, the host reads from the device, once: the
        stop requests of all processes (summed), the skipped-step counts, and the step's losses for the log line
        (with the samples/s since the previous one). In between the host never waits for the device, so every
        process learns of a stop request, and of non-finite steps, at the same step."""
        self.steps_since_log += 1
        step = self.state["step"]
        if step % self.config.train.log_every and step < self.max_steps:
            return
        stop = torch.full((1,), float(self.stop.local), device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            stop = self.accelerator.reduce(stop, reduction="sum")
        names, values = step_numbers(output)
        numbers = torch.cat([stop, self.guard.counts().float(), values]).tolist()  # the one read
        stops, in_a_row, skipped = numbers[:3]
        self.stop.agree(stops > 0)
        self._account_nonfinite(int(in_a_row), int(skipped))
        seconds = time.perf_counter() - self.log_start
        logged = {**dict(zip(names, numbers[3:])), "peak_memory_mb": peak_memory_mb(self.accelerator),
                  **{f"skipped/{reason}": count for reason, count in self.skips.at_loading.items()}}
        self.metrics.log_step(step, logged, self.scheduler.get_last_lr()[0], alpha,
                              self.steps_since_log * self.samples_per_step / seconds, bar)
        self.log_start, self.steps_since_log = time.perf_counter(), 0

    def _evaluate(self) -> dict | None:
        """Runs ``evaluate`` on every process (each scores its share of the set; all get the whole set's metrics) and
        logs its metrics under ``eval/`` (main process)."""
        if self.evaluate is None:
            return None
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        results = self.evaluate(model)
        model.train(was_training)
        if self.accelerator.is_main_process:
            self.metrics.log_eval(self.state["step"], results)
        return results

    def _micro_step(self, batch: dict, alpha: float, boundary: bool):
        with self.accelerator.accumulate(self.model):
            output = self.step_fn(self.model, batch, alpha, boundary, self.accelerator.device, self.state["step"])
            self.guard.backward(output.loss)
            if self.accelerator.sync_gradients:
                self.guard.step(self.model, self.optimizer)
                # The schedule counts optimizer steps, skipped ones too (the device decides, the host never knows).
                self.scheduler.step()
                average_batchnorm_statistics(self.accelerator, self.model)
            self.optimizer.zero_grad(set_to_none=True)  # accelerate makes it a no-op inside an accumulation window
        return output

    def _account_nonfinite(self, in_a_row: int, skipped: int) -> None:
        """Warns of the steps skipped since the last log line; stops when the last ``train.max_nonfinite_steps``
        steps were all skipped (the weights are then those of the last good step)."""
        new, self.nonfinite_skipped = skipped - self.nonfinite_skipped, skipped
        step, limit = self.state["step"], self.config.train.max_nonfinite_steps
        if new:
            logger.warning("%d optimizer step(s) up to step %d had a non-finite loss or gradient norm and were "
                           "skipped (%d in a row at step %d, %d in total)", new, step, in_a_row, step, skipped)
        if in_a_row >= limit:
            last = f"the last checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint yet"
            raise TclError(f"the last {in_a_row} optimizer steps (up to step {step}) had a NaN/Inf loss or gradient, "
                           f"at least train.max_nonfinite_steps = {limit} in a row; stopping with the weights of the "
                           f"last good step ({last}). Lower train.lr, set train.grad_clip, check the data, or resume "
                           f"with --resume latest after a fix.")

    def _should_save(self) -> bool:
        every = self.config.train.save_every
        return self.stop.agreed or (bool(every) and self.state["step"] % every == 0)

    def _checkpoint(self) -> None:
        text = yaml.safe_dump(self.config.to_dict(), sort_keys=False)
        state = {**self.state, "skipped": dict(self.skips.at_loading), "world": world_of(self.accelerator, self.config)}
        if self.key_log is not None:
            self.key_log.flush()
        data_state = self.loader.state_dict() if hasattr(self.loader, "state_dict") else None  # streamed data
        self.last_checkpoint = save_checkpoint(self.accelerator, self.output_dir, self.state["step"], state,
                                               self.config.train.keep_last, text, data_state)

    def _finish(self, elapsed: float, steps_run: int) -> None:
        """Closes the logs; the main process writes the final evaluation and prints a summary (``steps_run``: the
        optimizer steps this ``fit`` took, fewer than ``state["step"]`` after a resume)."""
        self.metrics.close()
        if self.key_log is not None:
            self.key_log.close()
        if not self.accelerator.is_main_process:
            return
        plot = plot_losses(self.output_dir / "metrics.jsonl", self.output_dir / "loss_curves.png",
                           chance_levels(self.config))
        evaluation = ""
        if self.final_eval is not None:
            path = self.output_dir / self.eval_file
            write_json_atomic({"step": self.state["step"], **self.final_eval}, path, indent=2)
            evaluation = f"evaluation {headline(self.final_eval)} ({path}), "
        samples = steps_run * self.samples_per_step
        print(f"{self.name} done: {self.state['step']} steps on {self.accelerator.num_processes} process(es), "
              f"{samples / max(elapsed, 1e-9):.1f} samples/s, "
              f"peak memory {peak_memory_mb(self.accelerator):.0f} MB, checkpoint {self.last_checkpoint}, "
              f"plot {plot}, {evaluation}{self.skips.format()}, {self.nonfinite_skipped} non-finite steps skipped")


def step_numbers(output) -> tuple[list[str], torch.Tensor]:
    """The names and values of a step's logged numbers (loss, ``loss/<term>``, ``diag/<name>``) as one fp32 tensor
    on the loss's device, so that the host reads them all at once."""
    named = {"loss": output.loss, **{f"loss/{k}": v for k, v in output.losses.items()},
             **{f"diag/{k}": v for k, v in output.diagnostics.items()}}
    device = output.loss.device
    values = [torch.as_tensor(v, device=device).detach().float().reshape(()) for v in named.values()]
    return list(named), torch.stack(values)
