"""One run per output folder: a second run stops at once naming the live one; a killed run's lock is stale."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcl.engine import finetune_vqa, pretrain
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
        code = pretrain.main(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
                              f"train.output_dir={out}", "train.max_steps=2", "data.num_workers=0"])
        assert code == 2 and time.perf_counter() - start < 30
        message = capsys.readouterr().err
        assert f"{out} is in use by another run (pid {process.pid}" in message and "train.output_dir" in message
        assert sorted(p.name for p in out.iterdir()) == [".run.lock", HOLDER_FILE]  # nothing of ours written
        code = finetune_vqa.main(["--config", str(REPO / "configs/vqa_tiny.yaml"), f"data.root={shapes_root}",
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
