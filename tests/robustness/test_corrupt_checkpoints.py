"""Damaged checkpoints and model folders: a message naming the broken file and the newest intact checkpoint,
never a traceback; ``--resume latest-intact`` takes that one."""

import json
import shutil
from pathlib import Path

import pytest

import tcl
from tcl.engine.commands import pretrain as main
from tcl.errors import TclError

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
FAST = ["train.batch_size=8", "model.queue_size=32", "data.num_workers=0", "train.warmup_steps=2", "train.epochs=2",
        "train.save_every=1", "train.keep_last=3"]


def pretrain(root, out, *extra):
    return main(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={root}", f"train.output_dir={out}",
                 *FAST, *extra])


@pytest.fixture(scope="module")
def finished(shapes_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("checkpoints") / "run"
    assert pretrain(shapes_root, out, "train.max_steps=3") == 0
    return out


@pytest.fixture
def run(finished, tmp_path):
    """A private copy of a 3-step run with checkpoints 1, 2 and 3, for a test to damage."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace(str(finished), str(copy)))
    return copy


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("damage,problem", [
    (lambda c: truncate(c / "model.safetensors", 1000), "model.safetensors is 1,000 bytes"),
    (lambda c: truncate(c / "optimizer.bin", 0), "optimizer.bin is 0 bytes"),
    (lambda c: (c / "scheduler.bin").unlink(), "scheduler.bin is missing"),
])
def test_resume_latest_names_the_damage_and_the_intact_checkpoint(shapes_root, run, capsys, damage, problem):
    damage(run / "checkpoint-00000003")
    assert pretrain(shapes_root, run, "train.max_steps=4", "--resume", "latest") == 2
    message = capsys.readouterr().err
    assert "checkpoint-00000003 is damaged" in message and problem in message
    assert f"--resume {run / 'checkpoint-00000002'}" in message and "Traceback" not in message
    assert pretrain(shapes_root, run, "train.max_steps=4", "--resume", "latest-intact") == 0
    state = json.loads((run / "checkpoint-00000004" / "trainer_state.json").read_text())
    assert state["step"] == 4


def test_damage_the_manifest_cannot_see_is_still_a_message(shapes_root, run, capsys):
    weights = run / "checkpoint-00000003" / "model.safetensors"
    weights.write_bytes(b"\x00" * weights.stat().st_size)  # same size, nonsense bytes
    assert pretrain(shapes_root, run, "train.max_steps=4", "--resume", "latest") == 2
    assert "checkpoint-00000003" in capsys.readouterr().err


def test_damaged_model_folders(shapes_root, run, tmp_path):
    model = tcl.load_pretrained(run)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    truncate(folder / "model.safetensors", 5000)
    with pytest.raises(TclError, match="damaged or incomplete"):
        tcl.load_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "architecture": "TCLRetrievalModel"}))
    with pytest.raises(TclError, match="'TCLRetrievalModel', which this version of tcl does not know"):
        tcl.load_vqa(folder)
