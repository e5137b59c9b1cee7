"""Real multi-process runs on CPU: DDP over gloo and DeepSpeed ZeRO-2, launched with `accelerate launch`.

After a few steps every rank must hold identical online weights, momentum weights, queues and queue pointers, and
the pointers must have advanced by the *gathered* batch (per-process batch x processes) per step.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
# Shards and other sources carry no boxes: the terms that read them are off.
NO_REGIONS = ("loss.region_class_weight=0", "loss.grounding_weight=0")
BATCH, QUEUE, STEPS, PROCESSES = 4, 32, 3, 2

pytestmark = pytest.mark.slow


def launch_command(accelerate_config: str, root: Path, out: Path, *extra: str, launch_options: tuple = ()
                   ) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / accelerate_config),
            *launch_options, str(REPO / "scripts/pretrain.py"), "--config", str(REPO / "configs/pretrain_tiny.yaml"),
            "--dump-rank-states", f"data.root={root}", f"train.output_dir={out}", f"train.batch_size={BATCH}",
            f"model.queue_size={QUEUE}", "data.num_workers=0", f"train.max_steps={STEPS}", *extra]


def launch(accelerate_config: str, root: Path, out: Path, *extra: str, launch_options: tuple = ()
           ) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(launch_command(accelerate_config, root, out, *extra, launch_options=launch_options),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def assert_ranks_agree(out: Path) -> None:
    ranks = [load_file(str(out / "rank_states" / f"rank{r}.safetensors")) for r in range(PROCESSES)]
    assert ranks[0].keys() == ranks[1].keys()
    different = [k for k in ranks[0] if not torch.equal(ranks[0][k], ranks[1][k])]
    assert different == []
    expected_ptr = STEPS * BATCH * PROCESSES % QUEUE
    for name in ("image_queue.ptr", "text_queue.ptr"):
        assert int(ranks[0][name]) == expected_ptr
    assert any(k.startswith("momentum.") for k in ranks[0])


@pytest.mark.parametrize("accelerate_config", ["configs/accelerate/cpu_multiprocess.yaml",
                                               "configs/accelerate/deepspeed_zero2.yaml"])
def test_two_processes_stay_identical(accelerate_config, shapes_root, tmp_path):
    out = tmp_path / "run"
    result = launch(accelerate_config, shapes_root, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{STEPS} steps on {PROCESSES} process(es)" in result.stdout
    assert_ranks_agree(out)
    assert (out / "latest").read_text() == f"checkpoint-{STEPS:08d}"
    assert_shared_evaluation_matches_one_process(out)


def assert_shared_evaluation_matches_one_process(out: Path) -> None:
    """The run's final evaluation, shared by its processes, gives what one process gets from the final weights."""
    from tcl.engine.commands import evaluate_retrieval

    written = sorted(out.glob("retrieval_*.json"))
    assert len(written) == 1
    shared = json.loads(written[0].read_text())
    assert shared.pop("step") == STEPS
    assert evaluate_retrieval(["--run", str(out)]) == 0  # rewrites the file, from one process
    alone = json.loads(written[0].read_text())
    assert shared.keys() == alone.keys() and alone["images"] >= 10
    for key, value in alone.items():
        assert shared[key] == pytest.approx(value, abs=1e-4), key


def test_deepspeed_in_bf16_trains_with_fp32_weights_and_teacher(shapes_root, tmp_path):
    """The launcher asks for bf16 (the paper configs' auto precision follows it): DeepSpeed's autocast runs the
    matmuls in bf16 while every weight, the momentum copy and the queues stay fp32 (DeepSpeed's own bf16 casts the
    module: its stem then refuses fp32 images, and an EMA in bf16 leaves most entries where they were)."""
    config = "configs/accelerate/deepspeed_zero2.yaml"
    runs = {}
    for precision in ("no", "bf16"):
        out = runs[precision] = tmp_path / precision
        result = launch(config, shapes_root, out, "eval.retrieval_file=null",
                        launch_options=("--mixed_precision", precision))
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"precision {'fp32' if precision == 'no' else 'bf16'} (train.mixed_precision auto" in result.stderr
        assert_ranks_agree(out)
    state = load_file(str(runs["bf16"] / "rank_states" / "rank0.safetensors"))
    floating = {name: tensor.dtype for name, tensor in state.items() if tensor.is_floating_point()}
    assert any(name.startswith("momentum.") for name in floating) and set(floating.values()) == {torch.float32}
    first = [json.loads((runs[p] / "metrics.jsonl").read_text().splitlines()[0])["loss"] for p in ("no", "bf16")]
    assert first[0] != first[1] and all(abs(loss) < 1e3 for loss in first)  # bf16 matmuls, and finite


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_machines_on_loopback_stay_identical(shapes_root, tmp_path):
    """The multi-node launcher config, as two accelerate "machines" of one process each on 127.0.0.1 (gloo,
    loopback only): both end with identical weights, momentum weights and queues."""
    out, port = tmp_path / "run", free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    machines = []
    for rank in range(2):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(REPO / "configs/accelerate/multi_node.yaml"), "--machine_rank", str(rank),
                   "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                   str(REPO / "scripts/pretrain.py"), "--config", "pretrain_tiny", "--dump-rank-states",
                   f"data.root={shapes_root}", f"train.output_dir={out}", f"train.batch_size={BATCH}",
                   f"model.queue_size={QUEUE}", "data.num_workers=0", f"train.max_steps={STEPS}"]
        machines.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True))
    try:
        logs = [machine.communicate(timeout=600) for machine in machines]
    finally:
        for machine in machines:
            machine.kill()
    for machine, (stdout, stderr) in zip(machines, logs):
        assert machine.returncode == 0, stderr[-3000:]
    assert f"{STEPS} steps on {PROCESSES} process(es)" in logs[0][0]
    assert_ranks_agree(out)


def test_both_processes_stop_when_the_folder_is_held(shapes_root, tmp_path):
    """The main process finds the folder held and every process stops with it (none waits at a barrier)."""
    sys.path.insert(0, str(REPO / "tests" / "robustness"))
    from test_run_lock import holder

    out = tmp_path / "run"
    process = holder(out)
    try:
        result = launch("configs/accelerate/cpu_multiprocess.yaml", shapes_root, out)
    finally:
        process.kill()
        process.wait()
    assert result.returncode != 0
    assert f"is in use by another run (pid {process.pid}" in result.stderr
    assert result.stderr.count("is in use by another run") == 2  # each rank says it, then exits


def test_two_processes_read_tar_shards_and_stay_identical(shapes_copy, tmp_path):
    """Pretraining from uneven tar shards (50, 50, 20 samples) written by tcl make-shards, on two processes."""
    from tcl import cli

    assert cli.main(["make-shards", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_copy}", "--out",
                     str(shapes_copy / "shards"), "--samples-per-shard", "50", "--quiet"]) == 0
    out = tmp_path / "run"
    result = launch("configs/accelerate/cpu_multiprocess.yaml", shapes_copy, out, "data.pretrain_source=shards",
                    'data.pretrain_files=["shards/{00000..00002}.tar"]', *NO_REGIONS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_ranks_agree(out)


def test_two_processes_stream_shards_and_resume_after_sigkill(shapes_copy, tmp_path):
    """Two processes of two loader workers stream 5 uneven shards (25, 25, 25, 25, 20 samples): both take every
    step with identical weights; killed with SIGKILL after a checkpoint and resumed with --resume latest, every
    step's samples on each process are those of an uninterrupted run."""
    import signal
    import time

    import psutil

    from tcl import cli

    assert cli.main(["make-shards", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_copy}", "--out",
                     str(shapes_copy / "shards"), "--samples-per-shard", "25", "--quiet"]) == 0
    stream = ["data.pretrain_source=webdataset", 'data.pretrain_files=["shards/{00000..00004}.tar"]',
              *NO_REGIONS, "data.num_workers=2", "data.shuffle_buffer=8", "train.log_sample_keys=true",
              "train.save_every=2", "eval.retrieval_file=null"]
    straight = launch("configs/accelerate/cpu_multiprocess.yaml", shapes_copy, tmp_path / "straight", *stream,
                      "train.max_steps=8")
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "8 steps on 2 process(es)" in straight.stdout
    ranks = [load_file(str(tmp_path / "straight/rank_states" / f"rank{r}.safetensors")) for r in range(PROCESSES)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])

    out = tmp_path / "resumed"
    command = launch_command("configs/accelerate/cpu_multiprocess.yaml", shapes_copy, out, *stream,
                             "train.max_steps=40")
    killed = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoint-00000002").is_dir() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    everyone = [psutil.Process(killed.pid), *psutil.Process(killed.pid).children(recursive=True)]
    for process in everyone:  # the node taken away: launcher, ranks and loader workers at once
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(everyone, timeout=30)
    killed.wait()
    assert int((out / "latest").read_text().split("-")[1]) < 8  # killed before the end
    resumed = launch("configs/accelerate/cpu_multiprocess.yaml", shapes_copy, out, *stream, "train.max_steps=8",
                     "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for rank in range(PROCESSES):
        lines = [(tmp_path / run / f"sample_keys/rank{rank}.jsonl").read_text().splitlines()
                 for run in ("straight", "resumed")]
        assert lines[0] == lines[1] and len(lines[0]) == 8
