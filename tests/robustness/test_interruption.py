"""Interrupted training loses nothing it promised to keep: SIGKILL costs at most the steps since the last
checkpoint, SIGTERM/SIGINT write a final checkpoint and exit cleanly, and a checkpoint write that fails half-way
(disk full, or the process killed while writing) leaves the previous checkpoint intact and loadable."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tcl.engine.commands import pretrain as main

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
# No retrieval evaluation at the end of a run: nothing here reads it (the weights and checkpoints are compared).
FAST = ["train.batch_size=8", "model.queue_size=32", "data.num_workers=0", "train.warmup_steps=2",
        "train.log_every=1", "train.epochs=2", "train.deterministic=true", "eval.retrieval_file=null"]


def pretrain(root, out, *extra):
    return main(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={root}", f"train.output_dir={out}",
                 *FAST, *extra])


def command(root, out, *extra, script=None):
    return [sys.executable, *(["-c", script] if script else [str(REPO / "scripts/pretrain.py")]),
            "--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={root}", f"train.output_dir={out}",
            *FAST, *extra]


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path.name} appeared"
        assert time.time() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)


def max_difference(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    return max((x[k].float() - y[k].float()).abs().max().item() for k in x)


def latest(out: Path) -> str:
    return (out / "latest").read_text()


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(shapes_root, tmp_path):
    """A real process killed with SIGKILL after a checkpoint, resumed with --resume latest, ends where an
    uninterrupted run ends. (The runs that are not killed are this process: a second interpreter would only add its
    start-up.)"""
    steps = ["train.max_steps=8", "train.save_every=2"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert pretrain(shapes_root, straight, *steps) == 0
    process = subprocess.Popen(command(shapes_root, killed, *steps), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for(killed / "checkpoint-00000004" / "trainer_state.json", process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert latest(killed) != "checkpoint-00000008"
    assert pretrain(shapes_root, killed, *steps, "--resume", "latest") == 0
    assert max_difference(straight / "checkpoint-00000008", killed / "checkpoint-00000008") <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_write_a_checkpoint_and_exit_cleanly(shapes_root, tmp_path, signum):
    out = tmp_path / "stopped"
    process = subprocess.Popen(command(shapes_root, out, "train.max_steps=200", "train.save_every=2"), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(out / "checkpoint-00000002" / "trainer_state.json", process)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    assert f"received {signal.Signals(signum).name}: saving a checkpoint and stopping" in stderr
    assert "Traceback" not in stderr
    step = json.loads((out / latest(out) / "trainer_state.json").read_text())["step"]
    assert 2 <= step < 200 and latest(out) == f"checkpoint-{step:08d}"
    assert f"pretraining done: {step} steps" in stdout
    assert not list(out.glob(".tmp-*"))


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(shapes_root, tmp_path, monkeypatch, capsys):
    """The second checkpoint's weights fail to write (ENOSPC): the run stops with a message naming the intact
    checkpoint, the partial folder is removed, and resuming from it finishes the run."""
    import accelerate.utils.other as accelerate_io

    real_save = accelerate_io.safe_save_file
    calls = []

    def failing_save(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:
            Path(filename).write_bytes(b"\0" * 1000)  # half a file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(accelerate_io, "safe_save_file", failing_save)
    out = tmp_path / "full"
    assert pretrain(shapes_root, out, "train.max_steps=6", "train.save_every=2") == 2
    error = capsys.readouterr().err
    assert f"writing checkpoint {out / 'checkpoint-00000004'} failed (the disk is full)" in error
    assert f"The previous checkpoint {out / 'checkpoint-00000002'} is intact" in error
    assert "--resume latest" in error and "Traceback" not in error
    assert latest(out) == "checkpoint-00000002"
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-00000002"]

    monkeypatch.setattr(accelerate_io, "safe_save_file", real_save)
    assert pretrain(shapes_root, out, "train.max_steps=6", "train.save_every=2", "--resume", "latest") == 0
    assert latest(out) == "checkpoint-00000006"


@pytest.fixture
def small_disk(tmp_path):
    """A real 30 MB filesystem (tmpfs): room for one tiny-model checkpoint (28 MB), not for two."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode}); the mocked "
                    "disk-full test above still runs")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_real_full_disk(shapes_root, small_disk, capsys):
    """The second checkpoint does not fit: a message, not a traceback; the partial folder is removed (the space comes
    back); resuming on the still too small disk fails the same clean way."""
    out = small_disk / "run"
    extra = ("train.max_steps=3", "train.save_every=1", "eval.retrieval_file=null")
    assert pretrain(shapes_root, out, *extra) == 2
    error = capsys.readouterr().err
    assert f"writing checkpoint {out / 'checkpoint-00000002'} failed (the disk is full)" in error
    assert f"The previous checkpoint {out / 'checkpoint-00000001'} is intact" in error and "Traceback" not in error
    assert not list(out.glob(".tmp-*")) and latest(out) == "checkpoint-00000001"
    free = shutil.disk_usage(small_disk).free
    assert free > 1_000_000  # what the partial folder held is free again
    assert pretrain(shapes_root, out, *extra, "--resume", "latest") == 2
    assert "failed (the disk is full)" in capsys.readouterr().err
    assert latest(out) == "checkpoint-00000001"


# Runs pretraining with the weights writer of the 2nd checkpoint stopping half-way, so the test can kill it there.
HALF_WRITE_DRIVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import accelerate.utils.other as accelerate_io
    real_save, calls = accelerate_io.safe_save_file, []
    def half_save(tensors, filename, *args, **kwargs):
        calls.append(filename)
        real_save(tensors, filename, *args, **kwargs)
        if len(calls) == 2:
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
            Path(filename).with_name("HALF_WRITTEN").touch()
            time.sleep(600)
    accelerate_io.safe_save_file = half_save
    from tcl.engine.commands import pretrain as main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(shapes_root, tmp_path):
    steps = ["train.max_steps=6", "train.save_every=2"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert pretrain(shapes_root, straight, *steps) == 0
    process = subprocess.Popen(command(shapes_root, killed, *steps, script=HALF_WRITE_DRIVER), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(killed / ".tmp-checkpoint-00000004" / "HALF_WRITTEN", process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert latest(killed) == "checkpoint-00000002"
    assert not (killed / "checkpoint-00000004").exists()
    # The previous checkpoint still loads: its weights are those of an uninterrupted run at step 2.
    state = load_file(str(killed / "checkpoint-00000002" / "model.safetensors"))
    assert all(torch.isfinite(t.float()).all() for t in state.values())
    assert pretrain(shapes_root, killed, *steps, "--resume", "latest") == 0  # in this process, as the straight run
    assert not (killed / ".tmp-checkpoint-00000004").exists()
    assert max_difference(straight / "checkpoint-00000006", killed / "checkpoint-00000006") <= 1e-6


# Runs pretraining whose checkpoint writes stall once the test creates SLOW in the run folder (a slow shared disk).
SLOW_WRITE_DRIVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import accelerate.utils.other as accelerate_io
    real_save = accelerate_io.safe_save_file
    def slow_save(tensors, filename, *args, **kwargs):
        run = Path(filename).parents[1]
        if (run / "SLOW").exists():
            (run / "WRITING").touch()
            time.sleep(600)
        real_save(tensors, filename, *args, **kwargs)
    accelerate_io.safe_save_file = slow_save
    from tcl.engine.commands import pretrain as main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_a_second_sigterm_ends_the_process_at_once_and_keeps_the_last_checkpoint(shapes_root, tmp_path):
    """The first SIGTERM starts the stop checkpoint, whose write stalls; a second one 2.5 s later ends the process
    within seconds, by that signal; the previous checkpoint stays the latest, intact, and the run resumes from it."""
    from tcl.run_folder import checkpoint_problem

    import psutil

    out = tmp_path / "stopped"
    steps = ["train.max_steps=200", "train.save_every=2", "data.num_workers=1"]  # a loader worker to leave behind
    process = subprocess.Popen(command(shapes_root, out, *steps, script=SLOW_WRITE_DRIVER), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(out / "checkpoint-00000002" / "trainer_state.json", process)
    (out / "SLOW").touch()
    process.send_signal(signal.SIGTERM)
    wait_for(out / "WRITING", process)
    children = psutil.Process(process.pid).children(recursive=True)
    time.sleep(2.5)
    start = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert time.perf_counter() - start < 10
    assert process.returncode == -signal.SIGTERM
    assert "received SIGTERM again: ending now" in stderr
    assert children and psutil.wait_procs(children, timeout=20)[1] == []  # the loader's worker follows its parent
    name = latest(out)
    assert checkpoint_problem(out / name) is None
    unfinished = [p.name for p in out.glob(".tmp-checkpoint-*")]  # the stop checkpoint, cut short
    assert len(unfinished) == 1 and unfinished[0] > f".tmp-{name}"
    (out / "SLOW").unlink()
    # Resumed in this process: a second interpreter would only add its start-up.
    assert pretrain(shapes_root, out, "train.max_steps=6", "train.save_every=2", "--resume", "latest") == 0
    assert latest(out) == "checkpoint-00000006"


@pytest.mark.slow
def test_a_signal_delivered_twice_at_once_is_one_request(shapes_root, tmp_path):
    """A scheduler that signals every process and a launcher that forwards its own copy: two SIGTERMs 50 ms apart
    still end in a checkpoint and exit code 0."""
    out = tmp_path / "stopped"
    process = subprocess.Popen(command(shapes_root, out, "train.max_steps=200", "train.save_every=2"), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(out / "checkpoint-00000002" / "trainer_state.json", process)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    assert stderr.count("received SIGTERM") == 1
    step = json.loads((out / latest(out) / "trainer_state.json").read_text())["step"]
    assert step > 2 and f"pretraining done: {step} steps" in stdout


def test_a_stop_request_and_what_counts_as_a_lost_peer():
    """In-process: the first SIGTERM sets this process's flag (the trainer's reduction makes it agreed), a repeat
    within the window changes nothing; a collective's gloo/NCCL failure is a lost peer, other errors are not."""
    from tcl.engine.stopping import StopRequest, peer_failure

    stop = StopRequest()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # within 2 s: the same request
        assert stop.local and not stop.agreed
        stop.agree(False)
        assert not stop.agreed
        stop.agree(True)
        assert stop.agreed
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) == stop.previous[signal.SIGTERM]  # the handler before it, back
    assert peer_failure(RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error: Connection reset "
                                     "by peer"))
    assert peer_failure(RuntimeError("Application timeout caused pair closure"))
    assert not peer_failure(RuntimeError("DataLoader timed out after 5 seconds"))
    assert not peer_failure(ValueError("gloo"))
