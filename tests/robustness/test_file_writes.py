"""Every file the package writes: all or nothing, and with the user's usual permissions (umask), never 0600."""

import os
import stat
from pathlib import Path

import pytest

from tcl.atomic import atomic_write, write_json_atomic
from tcl.evaluation.results import write_results
from test_serve import tiny_pipeline


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    previous = os.umask(0o022)
    yield set_mask
    os.umask(previous)


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_models_and_results_follow_the_umask(shapes_root, tmp_path, umask, mask, expected):
    umask(mask)
    tiny_pipeline(shapes_root).save_pretrained(tmp_path / "model")
    write_results([{"question_id": 1, "answer": "yes"}], tmp_path / "model" / "results.json")
    found = modes(tmp_path / "model")
    assert {"model.safetensors", "answer_list.json", "config.json", "results.json"} <= found.keys()
    assert set(found.values()) == {expected}, found


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic({"old": 1}, path)
    with pytest.raises(RuntimeError):
        with atomic_write(path) as temporary:
            temporary.write_text('{"new": ')
            raise RuntimeError("disk full, say")
    assert path.read_text() == '{"old": 1}' and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
