"""One run per output folder: a second run stops at once naming the live one; a killed run's lock is stale."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcl.engine.commands import finetune_vqa, pretrain
from tcl.engine.run_lock import HOLDER_FILE, OutputFolderBusy, hold_output_folder

REPO = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time\nfrom tcl.engine.run_lock import hold_output_folder\n"
        "with hold_output_folder(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")


def holder(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder`` as a live run would."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_run_in_a_live_runs_folder_stops_at_once(shapes_root, tmp_path, capsys):
    out = tmp_path / "run"
    process = holder(out)
    try:
        start = time.perf_counter()
        code = pretrain(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
                              f"train.output_dir={out}", "train.max_steps=2", "data.num_workers=0"])
        assert code == 2 and time.perf_counter() - start < 30
        message = capsys.readouterr().err
        assert f"{out} is in use by another run (pid {process.pid}" in message and "train.output_dir" in message
        assert sorted(p.name for p in out.iterdir()) == [".run.lock", HOLDER_FILE]  # nothing of ours written
        code = finetune_vqa(["--config", str(REPO / "configs/vqa_tiny.yaml"), f"data.root={shapes_root}",
                                  f"train.output_dir={out}", "vqa.init=null"])
        assert code == 2 and f"pid {process.pid}" in capsys.readouterr().err
    finally:
        process.kill()
        process.wait()


def test_a_killed_runs_lock_is_stale(tmp_path, caplog):
    folder = tmp_path / "run"
    process = holder(folder)
    with pytest.raises(OutputFolderBusy):
        with hold_output_folder(folder):
            pass
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert json.loads((folder / HOLDER_FILE).read_text())["pid"] == process.pid  # left behind by the killed run
    caplog.set_level("INFO")
    with hold_output_folder(folder):  # the OS released the dead process's lock: taken over
        assert json.loads((folder / HOLDER_FILE).read_text())["pid"] != process.pid
    assert "ended without releasing" in caplog.text
    assert not (folder / HOLDER_FILE).exists()
    with hold_output_folder(folder):  # and released again at the end of a run
        pass


def snapshot(folder: Path) -> dict:
    """Every file below ``folder`` (but the lock's own) with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (".run.lock", HOLDER_FILE)}


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_folder_that_holds_a_run_takes_only_resume_or_overwrite(shapes_root, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
              f"train.output_dir={out}", "train.max_steps=2", "data.num_workers=0", "train.batch_size=8",
              "model.queue_size=32", "eval.retrieval_file=null", "train.log_every=1"]
    assert pretrain(common) == 0
    finished = snapshot(out)
    other = [*common, "train.seed=7", "model.vision_width=64"]
    assert pretrain(other) == 2
    message = capsys.readouterr().err
    assert f"{out} already holds a run (checkpoint-00000002, config.yaml, latest, metrics.jsonl)" in message
    assert "--resume latest" in message and "--overwrite" in message and "train.output_dir" in message
    assert snapshot(out) == finished  # nothing written
    assert finetune_vqa(["--config", str(REPO / "configs/vqa_tiny.yaml"), f"data.root={shapes_root}",
                              f"train.output_dir={out}", "vqa.init=null"]) == 2
    assert "already holds a run" in capsys.readouterr().err and snapshot(out) == finished

    assert pretrain([*other, "--resume", "latest", "--overwrite"]) == 2
    assert "give one of them" in capsys.readouterr().err

    (out / "notes.txt").write_text("mine\n")
    assert pretrain([*other, "--overwrite"]) == 0  # the old run deleted first, other files left
    assert (out / "notes.txt").read_text() == "mine\n"
    config = (out / "config.yaml").read_text()
    assert "vision_width: 64" in config and "seed: 7" in config
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-00000002"]


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_an_empty_or_run_less_folder_is_fine(shapes_root, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "README.txt").write_text("my notes\n")
    assert pretrain(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
                          f"train.output_dir={out}", "train.max_steps=1", "data.num_workers=0", "train.batch_size=8",
                          "model.queue_size=32", "eval.retrieval_file=null"]) == 0
    assert (out / "README.txt").read_text() == "my notes\n" and (out / "checkpoint-00000001").is_dir()
