"""The training step never makes the host wait for the device, except once per log line.

Every call that would wait for a GPU (``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``, ``bool()``, ``int()``,
``float()`` or ``index()`` of a tensor, ``nonzero``, ``masked_select``, boolean-mask indexing) made from the project's
code inside the training step (forward, backward, optimizer step, the log line) is counted over a real run of the
real loop on the CPU; torch's own code is left out (on a GPU, ``benchmarks/gpu_check.sh`` runs with CUDA's sync
debug mode, which sees everything). Data loading, checkpoints and evaluation are outside the step.
"""

import collections
import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import tcl
from tcl.engine.commands import finetune_vqa, pretrain
from tcl.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
# Shards and other sources carry no boxes: the terms that read them are off.
NO_REGIONS = ("loss.region_class_weight=0", "loss.grounding_weight=0")
TCL = str(Path(tcl.__file__).parent)
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
SYNCING = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero",
           "masked_select"}
STEPS, LOG_EVERY = 10, 5
FAST = ["train.batch_size=8", "model.queue_size=32", "data.num_workers=0", "train.warmup_steps=2", "train.epochs=2",
        f"train.max_steps={STEPS}", f"train.log_every={LOG_EVERY}"]


class SyncCounter(TorchFunctionMode):
    """Counts syncing tensor calls by the line of the project's code that made them."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCING or (name == "__getitem__" and _boolean_index(args[1])):
            caller = next((frame for frame in reversed(traceback.extract_stack()[:-1])
                           if frame.filename.startswith(TCL)), None)
            if caller is not None:
                self.calls[f"{name} at {caller.filename[len(TCL) + 1:]}:{caller.lineno}"] += 1
        return func(*args, **(kwargs or {}))


def _boolean_index(index) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
               for i in (index if isinstance(index, tuple) else (index,)))


@pytest.fixture
def counter(monkeypatch):
    counter = SyncCounter()
    for name in ("_micro_step", "_check_in"):
        method = getattr(Trainer, name)

        def counted(*args, _method=method, **kwargs):
            with counter:
                return _method(*args, **kwargs)

        monkeypatch.setattr(Trainer, name, counted)
    return counter


def assert_one_per_log_line(counter: SyncCounter):
    assert sum(counter.calls.values()) <= STEPS // LOG_EVERY, dict(counter.calls)


@pytest.mark.parametrize("loss", [
    [],  # the demo's recipe: region classification, content-word masking, random ITM negatives
    ["loss.distill=true", "loss.itm_negatives=hard", "loss.skip_identical_captions=false",  # TCL's terms
     "loss.mlm_content_probability=0", *NO_REGIONS],
], ids=["demo", "tcl"])
def test_pretraining_steps_do_not_wait_for_the_device(shapes_root, tmp_path, counter, loss):
    assert pretrain(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
                          f"train.output_dir={tmp_path / 'run'}", *FAST, *loss]) == 0
    assert_one_per_log_line(counter)


@pytest.mark.parametrize("head", ["classifier", "decoder"])
def test_fine_tuning_steps_do_not_wait_for_the_device(shapes_root, tmp_path, counter, head):
    assert pretrain(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
                          f"train.output_dir={tmp_path / 'pre'}", *FAST, "train.max_steps=1"]) == 0
    counter.calls.clear()
    assert finetune_vqa(["--config", str(REPO / "configs/vqa_tiny.yaml"), f"data.root={shapes_root}",
                              f"train.output_dir={tmp_path / 'vqa'}", f"vqa.init={tmp_path / 'pre'}", *FAST,
                              f"vqa.head={head}", "vqa.group_by_image=false"]) == 0
    assert_one_per_log_line(counter)


def test_the_counter_sees_a_read_made_by_the_project():
    """The check can fail: the guard that reads its flag (DeepSpeed's way) is counted; the same read made by test
    code is not."""
    from accelerate import Accelerator

    from tcl.engine.step_guard import HostGuard

    counter, loss = SyncCounter(), torch.tensor(1.0)
    with counter:
        loss.item()
    assert not counter.calls
    with counter:
        HostGuard(Accelerator(cpu=True), grad_clip=0.0).backward(loss.requires_grad_())
    assert list(counter.calls) == [f"item at engine/step_guard.py:{_line_of('return flag.item() == 0')}"]


def _line_of(text: str) -> int:
    lines = (REPO / "tcl/engine/step_guard.py").read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)
