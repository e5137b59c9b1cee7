"""Resume refuses a changed configuration before writing anything; metrics.jsonl holds each step once after it."""

import json
from pathlib import Path

import pytest

from tcl.engine.pretrain import main
from tcl.engine.resume import config_differences, drop_metrics_after

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
FAST = ["train.batch_size=8", "model.queue_size=32", "data.num_workers=0", "train.warmup_steps=2", "train.log_every=1",
        "train.epochs=2"]


def pretrain(root, out, *extra):
    return main(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={root}", f"train.output_dir={out}",
                 *FAST, *extra])


@pytest.fixture(scope="module")
def interrupted(shapes_root, tmp_path_factory):
    """A run checkpointed at step 2 whose log goes on to step 3 (as if killed before its next checkpoint)."""
    out = tmp_path_factory.mktemp("resume") / "run"
    assert pretrain(shapes_root, out, "train.max_steps=3", "train.save_every=2") == 0
    (out / "latest").write_text("checkpoint-00000002")
    return out


@pytest.mark.parametrize("change,key", [("model.hidden_size=64", "model.hidden_size"),
                                        ("train.batch_size=16", "train.batch_size"),
                                        ("loss.objective=debiased_pos", "loss.objective")])
def test_a_changed_setting_stops_before_anything_is_written(shapes_root, interrupted, capsys, change, key):
    before = {p: p.read_bytes() for p in interrupted.rglob("*") if p.is_file() and p.name != ".run.lock"}
    assert pretrain(shapes_root, interrupted, "train.max_steps=4", change, "--resume", "latest") == 2
    message = capsys.readouterr().err
    assert f"{key}:" in message and "start a new run" in message and len(message.splitlines()) == 1
    after = {p: p.read_bytes() for p in interrupted.rglob("*") if p.is_file() and p.name != ".run.lock"}
    assert after == before  # config.yaml, checkpoints and metrics untouched


def test_extending_a_run_is_allowed_and_logs_each_step_once(shapes_root, interrupted):
    assert pretrain(shapes_root, interrupted, "train.max_steps=4", "train.save_every=1", "eval.every=1",
                    "--resume", "latest") == 0
    steps = [json.loads(line)["step"] for line in (interrupted / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == [1, 2, 3, 4]


def test_differences_list_only_what_may_not_change(tmp_path):
    saved = {"train": {"max_steps": 3, "lr": 1e-3, "output_dir": "a"}, "eval": {"every": 5}, "model": {"width": 1}}
    current = {"train": {"max_steps": 9, "lr": 3e-4, "output_dir": "b"}, "eval": {"every": 1}, "model": {"width": 1}}
    assert config_differences(saved, current) == [("train.lr", 1e-3, 3e-4)]
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    drop_metrics_after(log, 2)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
