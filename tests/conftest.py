"""Shared fixtures: a small generated dataset (made once per session) and an isolated index cache."""

import os
import shutil
from pathlib import Path

import pytest

from tcl.config import load_config
from tcl.make_data import make_shapes_dataset

REPO = Path(__file__).resolve().parents[1]
TINY_GENERATOR = {"train_images": 24, "val_images": 12, "image_size": 64, "questions_per_image": 6, "seed": 3}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Indexes go to a per-test folder, never to the user's ~/.cache."""
    monkeypatch.setenv("TCL_CACHE", str(tmp_path_factory.mktemp("tcl_cache")))


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """A generated dataset shared by the whole session; tests must not modify it (use ``shapes_copy``)."""
    root = tmp_path_factory.mktemp("shapes")
    os.environ.setdefault("TCL_CACHE", str(tmp_path_factory.mktemp("session_cache")))
    make_shapes_dataset(root, show_progress=False, **TINY_GENERATOR)
    return root


@pytest.fixture
def shapes_copy(shapes_root, tmp_path) -> Path:
    """A private copy of the generated dataset that a test may damage."""
    copy = tmp_path / "shapes"
    shutil.copytree(shapes_root, copy)
    return copy


@pytest.fixture
def tiny_config():
    """Returns a function building the tiny pretraining config for a data root, with extra overrides."""

    def make(root: Path, *overrides: str, config: str = "configs/pretrain_tiny.yaml"):
        return load_config(REPO / config, [f"data.root={root}", "data.num_workers=0", *overrides])

    return make


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps its state in process-wide singletons; each in-process run starts from a clean one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)
