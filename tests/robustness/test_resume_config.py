"""Resume refuses a changed configuration before writing anything; metrics.jsonl holds each step once after it."""

import json
from pathlib import Path

import pytest

from tcl.engine.commands import pretrain as main
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


def world(processes, batch_size, accumulation=1, deepspeed=False, streamed=False):
    return {"processes": processes, "batch_size": batch_size, "grad_accum_steps": accumulation,
            "deepspeed": deepspeed, "streamed": streamed}


def written_by(tmp_path, saved_world) -> Path:
    """A run folder whose checkpoint records the processes that wrote it (the layout the trainer writes)."""
    from tcl.config import load_config, save_config

    out = tmp_path / "run"
    checkpoint = out / "checkpoint-00000004"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"epoch": 0, "batch": 4, "step": 4,
                                                               "world": saved_world}))
    config = load_config(REPO / "configs/pretrain_tiny.yaml",
                         [f"train.output_dir={out}", f"train.batch_size={saved_world['batch_size']}",
                          f"train.grad_accum_steps={saved_world['grad_accum_steps']}"])
    save_config(config, out / "config.yaml")
    (out / "latest").write_text(checkpoint.name)
    return out


@pytest.mark.parametrize("saved, now, fragment", [
    (world(2, 4), world(1, 4), "Keep the global batch: resume with --resume latest train.batch_size=8 on these 1"),
    (world(2, 4), world(3, 4), "No per-process batch splits the global batch 8 over 3 processes"),
    (world(2, 4, 2), world(1, 8, 1), "--resume latest train.batch_size=8 train.grad_accum_steps=2"),
    (world(2, 4, deepspeed=True), world(1, 8, deepspeed=True), "Resume it with accelerate launch --num_processes 2"),
    (world(2, 4), world(2, 4, deepspeed=True), "was written without DeepSpeed"),
    (world(2, 4, streamed=True), world(1, 8, streamed=True), "Resume it with accelerate launch --num_processes 2"),
    (world(2, 4), world(2, 8), "train.batch_size: 4 in the run, 8 now"),
])
def test_resume_on_other_processes_is_refused_unless_the_steps_stay_the_same(tmp_path, saved, now, fragment):
    from tcl.config import load_config
    from tcl.engine.resume import checkpoint_to_resume
    from tcl.errors import TclError

    out = written_by(tmp_path, saved)
    config = load_config(out / "config.yaml", [f"train.batch_size={now['batch_size']}",
                                               f"train.grad_accum_steps={now['grad_accum_steps']}"])
    with pytest.raises(TclError) as refused:
        checkpoint_to_resume(config, "latest", now)
    assert fragment in str(refused.value)


@pytest.mark.parametrize("saved, now", [(world(2, 4), world(1, 8)), (world(1, 8), world(2, 4)),
                                        (world(4, 2, 3), world(2, 4, 3)), (world(2, 4), world(2, 4))])
def test_resume_on_other_processes_with_the_same_global_batch(tmp_path, saved, now):
    from tcl.config import load_config
    from tcl.engine.resume import checkpoint_to_resume

    out = written_by(tmp_path, saved)
    config = load_config(out / "config.yaml", [f"train.batch_size={now['batch_size']}"])
    assert checkpoint_to_resume(config, "latest", now) == out / "checkpoint-00000004"


@pytest.mark.parametrize("before, after", [((2, 4), (1, 8)), ((1, 8), (2, 4)), ((4, 2), (2, 4))])
def test_the_epoch_goes_on_with_every_sample_once_on_another_number_of_processes(before, after):
    """The real sampler: 3 global batches on one number of processes, the rest of the epoch on another with the same
    global batch: every sample of the epoch (less the short tail) is drawn once, in the same global batches."""
    from tcl.data.sampling import ShardedEpochSampler

    def global_batches(world_size, batch_size, start):
        samplers = [ShardedEpochSampler(50, batch_size, rank, world_size, seed=7) for rank in range(world_size)]
        for sampler in samplers:
            sampler.set_epoch(2, start)
        keys = [list(sampler) for sampler in samplers]
        per_rank = [[k[i:i + batch_size] for i in range(0, len(k), batch_size)] for k in keys]
        return [sorted(sum((rank[b] for rank in per_rank), [])) for b in range(len(per_rank[0]))]

    straight = global_batches(after[0], after[1], 0)
    first = global_batches(*before, 0)[:3]
    rest = global_batches(*after, 3)
    assert first + rest == straight
    drawn = sum(first + rest, [])
    assert len(drawn) == len(set(drawn)) == 50 // 8 * 8


def test_the_process_group_timeout_reaches_the_process_group(tiny_config, shapes_root):
    """What build_accelerator hands to torch.distributed.init_process_group (gloo here, NCCL on GPUs): the configured
    timeout."""
    from datetime import timedelta

    from tcl.engine.runtime import build_accelerator

    accelerator = build_accelerator(tiny_config(shapes_root, "train.process_group_timeout_s=123"))
    assert accelerator.init_handler.to_kwargs()["timeout"] == timedelta(seconds=123)


def test_a_checkpoint_of_another_run_folder_is_refused_and_the_timeout_may_change(tmp_path):
    from tcl.config import load_config
    from tcl.engine.resume import checkpoint_to_resume
    from tcl.errors import TclError

    out = written_by(tmp_path, world(2, 4))
    elsewhere = load_config(out / "config.yaml", [f"train.output_dir={tmp_path / 'other'}"])
    with pytest.raises(TclError, match="belongs to the run in .*--init"):
        checkpoint_to_resume(elsewhere, str(out / "checkpoint-00000004"), world(2, 4))
    patient = load_config(out / "config.yaml", ["train.process_group_timeout_s=3600"])
    assert checkpoint_to_resume(patient, str(out / "checkpoint-00000004"), world(2, 4)).name == "checkpoint-00000004"
