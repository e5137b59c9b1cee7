"""Pretraining end to end on the generated data: outputs, resume equivalence, multi-process DDP and DeepSpeed."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tcl.engine.commands import pretrain as main

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
FAST = ["train.batch_size=8", "model.queue_size=32", "data.num_workers=0", "train.warmup_steps=2",
        "train.log_every=1", "train.epochs=2", "train.deterministic=true"]


def pretrain(root, out, *extra):
    argv = ["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={root}", f"train.output_dir={out}",
            *FAST, *extra]
    return main(argv)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_run_writes_checkpoint_logs_and_plot(shapes_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain(shapes_root, out, "train.max_steps=4", "train.save_every=2") == 0
    assert (out / "latest").read_text() == "checkpoint-00000004"
    checkpoint = out / "checkpoint-00000004"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "trainer_state.json").is_file()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 4
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    lines = [r for r in records if "loss" in r]  # one per step; the evaluation has its own line
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "eval/i2t_r1" in r] == [4]
    assert {"loss/i2t", "loss/lmi_text", "loss/itm", "loss/mlm", "diag/alignment", "lr"} <= lines[0].keys()
    assert (out / "loss_curves.png").stat().st_size > 0
    assert (out / "config.yaml").is_file()
    assert list(out.rglob("events.out.tfevents*"))
    assert "pretraining done: 4 steps" in capsys.readouterr().out
    state = weights(checkpoint)
    assert any(k.startswith("momentum.") for k in state) and "image_queue.queue" in state


def test_keep_last_prunes_old_checkpoints(shapes_root, tmp_path):
    out = tmp_path / "run"
    pretrain(shapes_root, out, "train.max_steps=3", "train.save_every=1", "train.keep_last=2")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-00000002", "checkpoint-00000003"]


def test_resume_matches_uninterrupted_run(shapes_root, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain(shapes_root, straight, "train.max_steps=5")
    pretrain(shapes_root, resumed, "train.max_steps=2")
    assert main(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
                 f"train.output_dir={resumed}", *FAST, "train.max_steps=5", "--resume", "latest"]) == 0
    a, b = weights(straight / "checkpoint-00000005"), weights(resumed / "checkpoint-00000005")
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6


def test_gradient_accumulation_advances_queue_once_per_optimizer_step(shapes_root, tmp_path):
    out = tmp_path / "accumulate"
    assert pretrain(shapes_root, out, "train.grad_accum_steps=2", "train.max_steps=3") == 0
    state = weights(out / "checkpoint-00000003")
    assert int(state["image_queue.ptr"]) == 3 * 8 % 32
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lines = [r for r in lines if "loss" in r]
    assert len(lines) == 3 and lines[-1]["samples_per_s"] > 0
    # The schedule advances once per optimizer step: the same lr sequence as a run without accumulation.
    from tcl.config import load_config
    from tcl.engine.optim import learning_rate

    config = load_config(REPO / "configs/pretrain_tiny.yaml", FAST)
    total = (120 // 16) * config.train.epochs
    assert [r["lr"] for r in lines] == pytest.approx([learning_rate(s, total, config.train) for s in (1, 2, 3)])


def test_bf16_autocast_and_clipping_run(shapes_root, tmp_path):
    out = tmp_path / "bf16"
    assert pretrain(shapes_root, out, "train.mixed_precision=bf16", "train.grad_clip=1.0", "train.max_steps=2") == 0
    record = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line][-1]
    assert all(math.isfinite(v) for k, v in record.items() if k.startswith("loss"))
    state = weights(out / "checkpoint-00000002")
    assert state["momentum.models.vision_proj.weight"].dtype == torch.float32


def test_init_from_our_checkpoint_continues_from_its_weights(shapes_root, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    pretrain(shapes_root, first, "train.max_steps=2")
    assert main(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
                 f"train.output_dir={second}", *FAST, "train.max_steps=1", "train.lr=1e-12", "train.warmup_lr=1e-12",
                 "train.min_lr=1e-12", "--init", str(first)]) == 0
    before, after = weights(first / "checkpoint-00000002"), weights(second / "checkpoint-00000001")
    assert torch.allclose(before["vision_proj.weight"], after["vision_proj.weight"], atol=1e-6)


def test_tcl_pretrain_command_and_clear_errors(shapes_root, tmp_path, capsys):
    from tcl.cli import main as tcl_main

    assert tcl_main(["pretrain", "--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
                     f"train.output_dir={tmp_path / 'cli'}", *FAST, "train.max_steps=1"]) == 0
    assert tcl_main(["pretrain", "--config", str(REPO / "configs/pretrain_tiny.yaml"),
                     f"data.root={tmp_path / 'nowhere'}"]) == 2
    assert "does not exist. Run `tcl make-data" in capsys.readouterr().err
    assert tcl_main(["pretrain", "--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
                     f"train.output_dir={tmp_path / 'none'}", "--resume", "latest"]) == 2


def test_metrics_are_read_every_log_every_steps_and_at_the_last(shapes_root, tmp_path):
    """train.log_every=3 over 7 steps: lines at steps 3, 6 and 7, each with the samples/s since the line before."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    out = tmp_path / "run"
    assert pretrain(shapes_root, out, "train.max_steps=7", "train.log_every=3", "eval.retrieval_file=null") == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [3, 6, 7]
    assert all(line["samples_per_s"] > 0 and "loss/i2t" in line for line in lines)
