"""Checkpoint safety: our weights are safetensors; foreign ``.pth`` files are unpickled with ``weights_only=True``;
a pickle that would run code is refused, naming the explicit opt-in, and the code never runs."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tcl import cli
from tcl.errors import TclError
from tcl.models import TCLPretrainModel
from tcl.models.convert import read_foreign_checkpoint

REPO = Path(__file__).resolve().parents[2]


class Exploit:
    """Unpickling this creates the file ``marker``: proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "extra": Exploit(marker)}, path)
    return path, marker


def test_read_refuses_code_and_loads_only_when_trusted(evil, tmp_path):
    path, marker = evil
    with pytest.raises(TclError, match=r"refused to unpickle: the file refers to io\.open.*--trust-checkpoint "
                                       r"\(Python: trust=True\)"):
        read_foreign_checkpoint(path)
    assert not marker.exists()
    assert set(read_foreign_checkpoint(path, trust=True)) == {"x"}
    assert marker.exists()  # the opt-in really is one
    plain = tmp_path / "plain.pth"
    torch.save({"model": {"w": torch.ones(2)}}, plain)
    assert torch.equal(read_foreign_checkpoint(plain)["w"], torch.ones(2))  # plain weights need no trust
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(TclError, match="not a readable PyTorch checkpoint"):
        read_foreign_checkpoint(tmp_path / "text.pth")


def test_convert_command_refuses_without_the_flag(evil, tmp_path, capsys):
    path, marker = evil
    out = tmp_path / "converted"
    assert cli.main(["convert", "--from", "tcl", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "refused to unpickle" in err and "--trust-checkpoint" in err and "Traceback" not in err
    assert not marker.exists() and not out.exists()


def test_from_pretrained_refuses_a_pickle_that_runs_code(evil):
    path, marker = evil
    with pytest.raises(TclError, match="trust=True"):
        TCLPretrainModel.from_pretrained(path)
    assert not marker.exists()


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_vision_weights_in_a_training_config_are_plain_weights_only(evil, shapes_root, tmp_path, capsys):
    path, marker = evil
    assert cli.main(["pretrain", "--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
                     f"model.vision_pretrained={path}", f"train.output_dir={tmp_path / 'run'}", "data.num_workers=0",
                     "train.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert "model.vision_pretrained takes plain weights only" in err and "Traceback" not in err
    assert not marker.exists()


def test_our_saved_weights_are_safetensors(shapes_root, tmp_path):
    from test_serve import tiny_pipeline

    folder = tmp_path / "saved"
    tiny_pipeline(shapes_root).save_pretrained(folder)
    files = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in files and not {n for n in files if n.endswith((".bin", ".pt", ".pth", ".pkl"))}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:  # no pickle anywhere in it
        assert any(key.startswith("vision_encoder.") for key in weights.keys())
