"""Every command answers --help and rejects bad arguments or configs before importing the heavy stack (torch,
accelerate, DeepSpeed): checked by the modules a fresh interpreter has loaded, not by timing."""

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from tcl.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "heavy": sorted(m for m in ("torch", "accelerate", "deepspeed", "transformers",
                                                           "timm") if m in sys.modules)}))
"""


def run_cli(*argv: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    return json.loads(result.stdout.strip().splitlines()[-1]) | {"stderr": result.stderr}


@pytest.mark.parametrize("argv", [["--help"], ["pretrain", "--help"], ["finetune-vqa", "--help"],
                                  ["evaluate-vqa", "--help"], ["evaluate-retrieval", "--help"], ["predict", "--help"],
                                  ["serve", "--help"], ["config", "--help"]])
def test_help_imports_nothing_heavy(argv):
    result = run_cli(*argv)
    assert result["code"] == 0 and result["heavy"] == []


@pytest.mark.parametrize("argv,message", [
    (["pretrain", "train.max_stepz=3"], "Did you mean 'train.max_steps'"),
    (["finetune-vqa", "--config", "missing.yaml"], "config file not found"),
    (["evaluate-vqa", "--run", "no/such/run"], "no such folder"),
    (["evaluate-retrieval", "--run", "."], "no config.yaml in it"),
    (["pretrain", "loss.mlm_content_probability=2"], "must lie in [0, 1]"),
])
def test_argument_and_config_errors_come_before_the_heavy_imports(argv, message):
    result = run_cli(*argv)
    assert result["code"] == 2 and message in result["stderr"] and result["heavy"] == []


def test_a_short_run_prints_only_what_matters(shapes_root, tmp_path):
    """No DeepSpeed accelerator warning, no accelerate INFO line per checkpoint file, no tied-weights warning, no
    DataLoader worker warning on one CPU; the output folder named before the first step."""
    import shutil

    out = tmp_path / "run"
    command = [sys.executable, "-m", "tcl", "pretrain", f"data.root={shapes_root}", f"train.output_dir={out}",
               "train.max_steps=2", "train.save_every=1", "train.batch_size=8", "model.queue_size=64",
               "data.num_workers=2", "eval.retrieval_file=null"]
    if shutil.which("taskset"):
        command = ["taskset", "-c", "0", *command]  # one usable CPU: two workers would be more than it has
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stdout + result.stderr
    for noise in ("Setting accelerator to CPU", "Removed shared tensor", "accelerate.checkpointing",
                  "worker processes in total"):
        assert noise not in log, noise
    assert f"pretraining: writing to {out}" in log
    assert result.stderr.index(f"writing to {out}") < result.stderr.index("train:")  # before the progress bar
