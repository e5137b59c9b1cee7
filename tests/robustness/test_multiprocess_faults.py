"""Faults of a run of several processes, for real: two gloo processes under `accelerate launch` (and the two-"machine"
loopback launch), with signals sent to one process as a scheduler that takes a node away sends them.

Every SIGTERM case ends with every process stopped at the same step, a new checkpoint that loads and resumes; a
killed or stopped process ends the job with a message and a non-zero status within the process-group timeout plus
the launcher's 30-second grace, leaving no process behind; resuming on another number of processes continues with the
same global batch or is refused before anything is written.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tcl.run_folder import checkpoint_problem

REPO = Path(__file__).resolve().parents[2]
BATCH, QUEUE = 4, 32
TIMEOUT_S = 10  # train.process_group_timeout_s of these runs
# ... and of the run whose rank is stopped, which waits it out: these runs' longest wait in a collective (the
# checkpoint writes, start-up) is under 1 s on 2 cores (they pass with a 1-second timeout).
STOPPED_TIMEOUT_S = 5
LAUNCHER_GRACE_S = 30  # torch's elastic agent: SIGTERM to its workers, SIGKILL 30 s later
pytestmark = pytest.mark.slow


def training(root: Path, out: Path, *extra: str, timeout_s: int = TIMEOUT_S) -> list[str]:
    return [str(REPO / "scripts/pretrain.py"), "--config", "pretrain_tiny", f"data.root={root}",
            f"train.output_dir={out}", f"model.queue_size={QUEUE}", "data.num_workers=0", "train.save_every=2",
            "train.epochs=50", f"train.process_group_timeout_s={timeout_s}", "eval.retrieval_file=null",
            "train.log_every=1", *extra]


def launcher(arguments: list[str], *launch_options: str, config: str = "cpu_multiprocess.yaml",
             log: Path | None = None, **env: str) -> subprocess.Popen:
    """``accelerate launch`` of ``arguments``; its output to a pipe, or to the file ``log`` (to read while it runs)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs/accelerate" / config), *launch_options, *arguments]
    output = open(log, "w") if log else subprocess.PIPE
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, stdout=output,
                            stderr=subprocess.STDOUT, text=True)


def in_this_process(arguments: list[str]) -> int:
    """``python scripts/pretrain.py ARGUMENTS``'s exit status, run in the test's own process: one process, as a
    separate one would be, without its start-up (the test has imported what it imports)."""
    from tcl.engine.commands import pretrain

    assert arguments[0] == str(REPO / "scripts/pretrain.py")
    return pretrain(arguments[1:])


def wait_for_checkpoint(out: Path, step: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not (out / f"checkpoint-{step:08d}" / "trainer_state.json").exists():
        assert process.poll() is None, f"the run ended before checkpoint {step}"
        assert time.time() < deadline, f"no checkpoint {step} within {timeout} s"
        time.sleep(0.05)


def ranks(process: subprocess.Popen) -> dict[int, psutil.Process]:
    """The training processes a launcher started, by rank."""
    found = {}
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            if "pretrain.py" in " ".join(child.cmdline()) and "RANK" in child.environ():
                found[int(child.environ()["RANK"])] = child
        except psutil.NoSuchProcess:
            continue
    return found


def finish(process: subprocess.Popen, timeout: float) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()
        pytest.fail(f"the job did not end within {timeout} s: {process.communicate()[0][-3000:]}")
    return output


def alive(processes) -> list[int]:
    return [p.pid for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def assert_gone(processes, within: float = 5) -> None:
    deadline = time.time() + within
    while alive(processes) and time.time() < deadline:
        time.sleep(0.1)
    assert alive(processes) == [], f"processes left behind: {alive(processes)}"


def latest(out: Path) -> tuple[str, dict]:
    name = (out / "latest").read_text()
    return name, json.loads((out / name / "trainer_state.json").read_text())


def signal_rank_one(root: Path, out: Path, signum: int,
                    timeout_s: int = TIMEOUT_S) -> tuple[subprocess.Popen, dict, float]:
    """A 2-process run, and ``signum`` to its rank 1 once checkpoint 2 exists: (launcher, ranks, when sent)."""
    job = launcher(training(root, out, f"train.batch_size={BATCH}", "train.max_steps=200", timeout_s=timeout_s))
    wait_for_checkpoint(out, 2, job)
    workers = ranks(job)
    workers[1].send_signal(signum)
    return job, workers, time.time()


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_sigterm_to_one_rank_stops_every_rank_then_resumes_on_one_and_on_two_processes(shapes_root, tmp_path, capsys,
                                                                                     caplog):
    out = tmp_path / "run"
    job, workers, start = signal_rank_one(shapes_root, out, signal.SIGTERM)
    output = finish(job, 120)
    assert job.returncode == 0, output[-3000:]
    assert time.time() - start < 60
    assert_gone(workers.values())
    name, state = latest(out)
    step = state["step"]
    assert 2 < step < 200 and checkpoint_problem(out / name) is None
    assert state["world"] == {"processes": 2, "batch_size": BATCH, "grad_accum_steps": 1, "deepspeed": False,
                              "streamed": False}
    assert "received SIGTERM: saving a checkpoint and stopping" in output
    assert output.count(f"stopping on request at step {step}") == 2  # both ranks, the same step
    assert f"pretraining done: {step} steps on 2 process(es)" in output

    # One process with the same per-process batch: the steps would hold half the samples. Refused, nothing written.
    # (The one-process runs are this process: a second interpreter would only add its start-up.)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert in_this_process(training(shapes_root, out, f"train.batch_size={BATCH}", "--resume", "latest")) == 2
    refused = capsys.readouterr().err
    assert (f"written by 2 process(es) of batch {BATCH}" in refused
            and f"--resume latest train.batch_size={2 * BATCH}" in refused)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    # One process of twice the batch continues the same global batches; then two processes again.
    caplog.set_level(logging.INFO, logger="tcl")
    alone = in_this_process(training(shapes_root, out, f"train.batch_size={2 * BATCH}", f"train.max_steps={step + 2}",
                                     "--resume", "latest"))
    assert alone == 0, capsys.readouterr().err[-3000:]
    assert f"continued on 1 of batch {2 * BATCH}: the same {2 * BATCH} samples per optimizer step" in caplog.text
    assert latest(out)[1]["world"]["processes"] == 1 and latest(out)[1]["step"] == step + 2
    again = launcher(training(shapes_root, out, f"train.batch_size={BATCH}", f"train.max_steps={step + 4}",
                              "--resume", "latest"))
    output = finish(again, 300)
    assert again.returncode == 0, output[-3000:]
    name, state = latest(out)
    assert state["step"] == step + 4 and state["world"]["processes"] == 2 and checkpoint_problem(out / name) is None
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, step + 5))  # each step logged once across the three runs


def test_sigkill_of_one_rank_ends_the_job(shapes_root, tmp_path):
    out = tmp_path / "run"
    job, workers, start = signal_rank_one(shapes_root, out, signal.SIGKILL)
    output = finish(job, TIMEOUT_S + LAUNCHER_GRACE_S + 30)
    assert job.returncode != 0
    assert time.time() - start < TIMEOUT_S + LAUNCHER_GRACE_S
    assert "Signal 9 (SIGKILL) received by PID" in output
    assert_gone(workers.values())
    name, _ = latest(out)
    assert checkpoint_problem(out / name) is None


def test_a_stopped_rank_ends_the_job_after_the_timeout(shapes_root, tmp_path):
    """SIGSTOP, as a hung node: the other process's collective times out and names the step and the last
    checkpoint; the launcher then ends the stopped process (SIGKILL after its 30-second grace)."""
    out = tmp_path / "run"
    job, workers, start = signal_rank_one(shapes_root, out, signal.SIGSTOP, timeout_s=STOPPED_TIMEOUT_S)
    output = finish(job, STOPPED_TIMEOUT_S + LAUNCHER_GRACE_S + 60)
    elapsed = time.time() - start
    assert job.returncode != 0
    assert "error: process 0 of 2: a collective operation failed after step" in output
    assert f"train.process_group_timeout_s = {STOPPED_TIMEOUT_S} s. The last checkpoint is {out}" in output
    # The timeout, the launcher's grace, and a step or two on 2 cores before process 0 waits.
    assert elapsed < STOPPED_TIMEOUT_S + LAUNCHER_GRACE_S + 10, elapsed
    assert_gone(workers.values())
    name, _ = latest(out)
    assert checkpoint_problem(out / name) is None


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_to_one_machines_launcher_stops_both_machines(shapes_root, tmp_path):
    """Two "machines" on loopback, one process each: machine 1's launcher gets SIGTERM (its node is taken away) and
    forwards it to its process; both processes checkpoint at the same step and end, machine 0's with status 0."""
    out, port = tmp_path / "run", free_port()
    machines = [launcher(training(shapes_root, out, f"train.batch_size={BATCH}", "train.max_steps=200"),
                         "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port",
                         str(port), config="multi_node.yaml", log=tmp_path / f"machine{rank}.log",
                         LOGLEVEL="INFO")  # the launchers' own state lines
                for rank in range(2)]
    wait_for_checkpoint(out, 2, machines[0])
    workers = [worker for machine in machines for worker in ranks(machine).values()]
    machines[1].send_signal(signal.SIGTERM)
    machines[1].wait(timeout=120)
    signalled = (tmp_path / "machine1.log").read_text()
    # torch's launcher turns the signal it received into an exception (exit status 1) once its process has ended.
    assert "SignalException" in signalled and "failed (exitcode" not in signalled
    assert "received SIGTERM: saving a checkpoint and stopping" in signalled
    assert_gone(workers, within=60)
    # Machine 0's launcher saw its process succeed, then waits (torch's exit barrier, up to 300 s, not settable
    # from accelerate launch) for machine 1's launcher, which the signal ended: nothing of ours is left to wait for.
    deadline = time.time() + 60
    while "worker group successfully finished" not in (tmp_path / "machine0.log").read_text():
        assert time.time() < deadline, "machine 0's process did not end successfully"
        time.sleep(0.2)
    machines[0].kill()
    machines[0].wait()
    other = (tmp_path / "machine0.log").read_text()
    name, state = latest(out)
    step = state["step"]
    assert f"pretraining done: {step} steps on 2 process(es)" in other
    assert f"stopping on request at step {step}" in other and f"stopping on request at step {step}" in signalled
    assert checkpoint_problem(out / name) is None
    resumed = launcher(training(shapes_root, out, f"train.batch_size={BATCH}", f"train.max_steps={step + 2}",
                                "--resume", "latest"))
    output = finish(resumed, 300)
    assert resumed.returncode == 0, output[-3000:]
    assert latest(out)[1]["step"] == step + 2


def test_an_evaluation_image_one_process_cannot_read_stops_every_process(shapes_copy, tmp_path):
    """The evaluation set is shared: process 1 alone decodes the second val image, which is damaged. Both processes
    stop before training with the message (none is left waiting in the evaluation's collectives)."""
    captions = json.loads((shapes_copy / "annotations/captions_val2014.json").read_text())
    second = sorted(captions["images"], key=lambda image: image["id"])[1]["file_name"]
    (shapes_copy / "images/val2014" / second).write_bytes(b"not an image")
    out = tmp_path / "run"
    arguments = [argument for argument in training(shapes_copy, out, f"train.batch_size={BATCH}", "train.max_steps=4")
                 if argument != "eval.retrieval_file=null"]
    job = launcher(arguments)
    output = finish(job, 120)
    assert job.returncode != 0
    assert output.count(f"error: process 1: {shapes_copy / 'images/val2014' / second}") == 2, output[-3000:]
    assert not (out / "checkpoint-00000002").exists()
