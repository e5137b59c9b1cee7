"""Bad configs and command lines: one clear ``error: ...`` line naming what to fix, exit code 2, no traceback
(unless ``--debug``), and nothing written — the check happens before any work starts."""

import subprocess
import sys
from pathlib import Path

import pytest

from tcl import cli

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = str(REPO / "configs/pretrain_tiny.yaml")
VQA = str(REPO / "configs/vqa_tiny.yaml")
FAST = ["data.num_workers=0", "train.max_steps=1"]


def fails_cleanly(capsys, argv: list[str], *phrases: str) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def test_unknown_key_in_the_config_file(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(Path(PRETRAIN).read_text().replace("\ntrain:\n", "\ntrain:\n  learning_rate: 1.0\n"))
    assert "learning_rate" in config.read_text()  # else this would be a whole pretraining run
    out = tmp_path / "run"
    fails_cleanly(capsys, ["pretrain", "--config", str(config), f"train.output_dir={out}"],
                  str(config), "unknown key 'train.learning_rate'", "Valid keys here: ")
    assert not out.exists()


def test_unknown_key_and_wrong_type_on_the_command_line(shapes_root, tmp_path, capsys):
    out = tmp_path / "run"
    fails_cleanly(capsys, ["pretrain", "--config", PRETRAIN, f"data.root={shapes_root}", f"train.output_dir={out}",
                           "train.nope=1"], "command-line override 'train.nope=1'", "unknown key 'train.nope'")
    fails_cleanly(capsys, ["finetune-vqa", "--config", VQA, f"data.root={shapes_root}", f"train.output_dir={out}",
                           "train.batch_size=abc"], "train.batch_size must be int, got 'abc'")
    fails_cleanly(capsys, ["pretrain", "--config", PRETRAIN, "loss.objective=nce"], "loss.objective")
    assert not out.exists()


def test_missing_files(shapes_root, tmp_path, capsys):
    fails_cleanly(capsys, ["pretrain", "--config", str(tmp_path / "none.yaml")], "none.yaml")
    fails_cleanly(capsys, ["pretrain", "--config", PRETRAIN, f"data.root={tmp_path / 'nowhere'}",
                           f"train.output_dir={tmp_path / 'run'}"], "does not exist. Run `tcl make-data")
    fails_cleanly(capsys, ["finetune-vqa", "--config", VQA, f"data.root={shapes_root}", "vqa.init=no/such/run",
                           f"train.output_dir={tmp_path / 'run'}", *FAST], "no/such/run")
    fails_cleanly(capsys, ["evaluate-vqa", "--run", str(tmp_path / "no_run")], "no_run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, phrase", [
    ("model.image_size=60", "model.image_size = 60 is not a multiple of model.patch_size = 8"),
    ("model.hidden_size=130", "not divisible by model.num_attention_heads"),
    ("model.fusion_layer=9", "model.fusion_layer = 9 must lie in"),
    ("model.max_text_len=100", "exceeds model.max_position_embeddings"),
])
def test_incompatible_sizes_in_the_config(shapes_root, tmp_path, capsys, override, phrase):
    fails_cleanly(capsys, ["pretrain", "--config", PRETRAIN, f"data.root={shapes_root}",
                           f"train.output_dir={tmp_path / 'run'}", override], phrase)
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_checkpoint_of_another_architecture(shapes_root, tmp_path, capsys):
    source = tmp_path / "pretrained"
    assert cli.main(["pretrain", "--config", PRETRAIN, f"data.root={shapes_root}", f"train.output_dir={source}",
                     "train.batch_size=8", "model.queue_size=32", *FAST]) == 0
    capsys.readouterr()
    smaller = ["model.hidden_size=64", "model.intermediate_size=256"]
    out = tmp_path / "vqa"
    fails_cleanly(capsys, ["finetune-vqa", "--config", VQA, f"data.root={shapes_root}", f"vqa.init={source}",
                           f"train.output_dir={out}", "train.batch_size=8", *FAST, *smaller],
                  f"vqa.init {source}: weights have other shapes than the model",
                  "is [128] there but [64] here", "more)", "its config.yaml")
    assert not out.exists()
    fails_cleanly(capsys, ["pretrain", "--config", PRETRAIN, f"data.root={shapes_root}", "--init", str(source),
                           f"train.output_dir={tmp_path / 'again'}", "train.batch_size=8", "model.queue_size=32",
                           *FAST, *smaller], "weights have other shapes than the model", "is [128] there but [64] here")


def test_impossible_batch_and_queue_combinations(shapes_root, tmp_path, capsys, monkeypatch):
    fails_cleanly(capsys, ["pretrain", "--config", PRETRAIN, f"data.root={shapes_root}", "model.queue_size=100"],
                  "model.queue_size = 100 is not divisible by train.batch_size x processes = 32 x 1 = 32",
                  "e.g. to one of [20, 25, 50]")
    monkeypatch.setenv("WORLD_SIZE", "3")
    fails_cleanly(capsys, ["pretrain", "--config", PRETRAIN, f"data.root={shapes_root}", "model.queue_size=1024"],
                  "train.batch_size x processes = 32 x 3 = 96")
    monkeypatch.delenv("WORLD_SIZE")
    fails_cleanly(capsys, ["finetune-vqa", "--config", VQA, f"data.root={shapes_root}", "vqa.init=null",
                           "train.batch_size=1024", f"train.output_dir={tmp_path / 'run'}", *FAST],
                  "fewer than one optimizer step")


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_zero3_is_refused_before_training(shapes_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    fails_cleanly(capsys, ["pretrain", "--config", PRETRAIN, f"data.root={shapes_root}",
                           f"train.output_dir={tmp_path / 'z3'}", *FAST], "ZeRO-3")
    assert not (tmp_path / "z3").exists()


def test_debug_shows_the_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "tcl", "--debug", "pretrain", "--config", str(tmp_path / "none.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "Traceback" in run.stderr and "ConfigError" in run.stderr and "none.yaml: config file not found" in run.stderr


def test_bad_subcommand_arguments_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["predict"])
    assert stop.value.code == 2 and "--model" in capsys.readouterr().err
