"""A NaN/Inf loss or gradient skips that optimizer step (weights untouched, counted, a warning with the next log line)
and K in a row at a log line stop the run with a message, leaving the last checkpoint as it was. The skip is decided
on the device (tcl.engine.step_guard.DeviceGuard), for the fused AdamW of real runs and for the others."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tcl.config import load_config
from tcl.data.bad_samples import SkipReport
from tcl.engine.runtime import build_accelerator
from tcl.engine.trainer import Trainer
from tcl.errors import TclError

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@dataclass
class Output:
    loss: torch.Tensor
    losses: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)


class Loader:
    """Ten fixed batches; the sampler interface the trainer uses (set_epoch with a start batch)."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.batches = [{"x": torch.randn(4, 3, generator=g), "index": i} for i in range(10)]
        self.sampler, self.start = self, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.start = start

    def __iter__(self):
        return iter(self.batches[self.start:])


def run(tmp_path, bad_batches, *overrides, snapshots=None, fused=False):
    config = load_config(REPO / "configs/vqa_tiny.yaml", [f"train.output_dir={tmp_path}", "train.epochs=1",
                                                          "train.save_every=2", *overrides])
    accelerator = build_accelerator(config)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    def step_fn(model, batch, alpha, boundary, device, step=0):
        if snapshots is not None:
            snapshots[batch["index"]] = model.weight.detach().clone()
        loss = model(batch["x"]).pow(2).mean()
        if batch["index"] in bad_batches:
            loss = loss * float("nan") if batch["index"] % 2 else loss * float("inf")
        return Output(loss)

    state = {"epoch": 0, "batch": 0, "step": 0}
    trainer = Trainer(config, accelerator, model, optimizer, scheduler, Loader(), 10, state, SkipReport(), step_fn)
    return trainer, model


@pytest.mark.parametrize("fused", [False, True])
def test_a_nonfinite_step_is_skipped_and_counted(tmp_path, caplog, capsys, fused):
    snapshots = {}
    trainer, model = run(tmp_path, {3, 6}, snapshots=snapshots, fused=fused)
    assert trainer.fit() == 0
    assert torch.equal(snapshots[4], snapshots[3])  # the NaN step left the weights as they were
    assert torch.equal(snapshots[7], snapshots[6])  # and so did the Inf step
    assert not torch.equal(snapshots[3], snapshots[2])  # good steps do update
    assert trainer.nonfinite_skipped == 2 and torch.isfinite(model.weight).all()
    assert ("2 optimizer step(s) up to step 10 had a non-finite loss or gradient norm and were skipped (0 in a row "
            "at step 10, 2 in total)") in caplog.text
    assert "2 non-finite steps skipped" in capsys.readouterr().out


def test_a_nonfinite_gradient_is_caught_by_the_clipping_norm(tmp_path):
    snapshots = {}
    trainer, model = run(tmp_path, set(), "train.grad_clip=1.0", snapshots=snapshots)
    original = trainer.step_fn

    def huge_gradient(model, batch, alpha, boundary, device, step=0):
        out = original(model, batch, alpha, boundary, device, step)
        if batch["index"] == 5:  # a finite loss whose gradient is not: d sqrt(u)/du at u = 0
            out.loss = out.loss + torch.sqrt((model.weight - model.weight.detach()).abs().sum())
            assert torch.isfinite(out.loss)
        return out

    trainer.step_fn = huge_gradient
    assert trainer.fit() == 0
    assert trainer.nonfinite_skipped == 1 and torch.equal(snapshots[6], snapshots[5])


def test_too_many_in_a_row_stop_with_the_last_good_weights(tmp_path):
    # steps 3, 4 and 5 are not finite; the log line of step 5 sees three in a row
    trainer, model = run(tmp_path, {2, 3, 4}, "train.max_nonfinite_steps=3", "train.log_every=5")
    with pytest.raises(TclError, match=r"the last 3 optimizer steps \(up to step 5\) had a NaN/Inf loss or gradient"):
        trainer.fit()
    assert torch.isfinite(model.weight).all()
    from safetensors.torch import load_file

    checkpoints = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-00000002", "checkpoint-00000004"]  # none after the stop
    # the checkpoint written between the skipped steps holds the last good weights, not corrupted ones
    good, later = (load_file(str(tmp_path / name / "model.safetensors")) for name in checkpoints)
    assert all(torch.equal(good[k], later[k]) for k in good)


def test_a_run_that_recovers_before_its_log_line_goes_on(tmp_path, caplog):
    trainer, model = run(tmp_path, {2, 3, 4}, "train.max_nonfinite_steps=3", "train.log_every=10")
    assert trainer.fit() == 0
    assert trainer.nonfinite_skipped == 3 and "(0 in a row at step 10, 3 in total)" in caplog.text


WORKER = '''
import importlib.util, json, sys
import torch
from tcl.config import load_config
from tcl.data.bad_samples import SkipReport
from tcl.engine.runtime import build_accelerator, check_distributed_setup
from tcl.engine.trainer import Trainer

spec = importlib.util.spec_from_file_location("nonfinite_steps", sys.argv[3])  # this test file: Output, Loader
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)
out, repo = sys.argv[1], sys.argv[2]
config = load_config(repo + "/configs/vqa_tiny.yaml", ["train.output_dir=" + out, "train.epochs=1",
                                                       "train.log_every=4", "train.batch_size=4"])
accelerator = build_accelerator(config)
check_distributed_setup(accelerator, config)
torch.manual_seed(0)
model = torch.nn.Linear(3, 1)
optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
weights = {}

def step_fn(model, batch, alpha, boundary, device, step=0):
    weights[batch["index"]] = [float(w) for w in accelerator.unwrap_model(model).weight.detach().flatten()]
    loss = model(batch["x"].to(device)).pow(2).mean()
    if batch["index"] == 3 and accelerator.process_index == 1:  # one process only
        loss = loss * float("nan")
    return tests.Output(loss)

trainer = Trainer(config, accelerator, model, optimizer, scheduler, tests.Loader(), 10,
                  {"epoch": 0, "batch": 0, "step": 0}, SkipReport(), step_fn)
trainer.fit()
with open(out + "/rank%d.json" % accelerator.process_index, "w") as handle:
    json.dump({"skipped": trainer.nonfinite_skipped, "weights": weights}, handle)
'''


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["cpu_multiprocess", "deepspeed_zero2"])
def test_a_nonfinite_loss_on_one_process_is_skipped_by_every_process(tmp_path, launcher):
    """Two real processes (DDP: decided on the device; DeepSpeed: read by the host); the NaN is on process 1 only."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                             str(REPO / f"configs/accelerate/{launcher}.yaml"), "--num_processes", "2", str(script),
                             str(tmp_path), str(REPO), __file__], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [rank["skipped"] for rank in ranks] == [1, 1]
    for rank in ranks:
        assert rank["weights"]["4"] == rank["weights"]["3"]  # the step of batch 3 left every process's weights
        assert rank["weights"]["3"] != rank["weights"]["2"]  # while the others update
    assert ranks[0]["weights"] == ranks[1]["weights"]
