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
    (["pretrain", "loss.itm_swap_negatives=2"], "must lie in [0, 1]"),
])
def test_argument_and_config_errors_come_before_the_heavy_imports(argv, message):
    result = run_cli(*argv)
    assert result["code"] == 2 and message in result["stderr"] and result["heavy"] == []
