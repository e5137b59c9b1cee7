"""The package works installed from a wheel, away from the source tree: the configs travel inside it, and the
commands run from an empty folder (data and run folders relative to it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A wheel built from a copy of the sources (the checkout gets no build/ folder) and installed, without its
    dependencies (those of this environment are reused), into a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(REPO / "tcl", source / "tcl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source), "-w",
         str(tmp / "dist")], tmp, env)
    wheel = next((tmp / "dist").glob("tcl-*.whl"))
    site = tmp / "site"
    run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], tmp, env)
    return site, {**env, "PYTHONPATH": str(site)}


def test_the_installed_copy_is_the_one_imported_and_ships_the_configs(installed, tmp_path):
    site, env = installed
    found = run([sys.executable, "-c", "import tcl.config as c; print(c.__file__); print(c.SHIPPED_CONFIGS)"],
                tmp_path, env).stdout.split()
    assert Path(found[0]).is_relative_to(site) and Path(found[1]).is_relative_to(site)
    listing = run([sys.executable, "-m", "tcl", "config", "--list"], tmp_path, env).stdout
    assert {"pretrain_tiny", "vqa_tiny", "pretrain_4m", "vqa"} <= set(listing.split())
    assert (site / "tcl" / "configs" / "accelerate" / "cpu_multiprocess.yaml").is_file()


@pytest.mark.slow
def test_config_make_data_and_a_short_pretraining_from_an_empty_folder(installed, tmp_path):
    _, env = installed
    work = tmp_path / "empty"
    work.mkdir()
    resolved = run([sys.executable, "-m", "tcl", "config", "pretrain_tiny"], work, env).stdout
    assert "vision_width: 128" in resolved and "root: data/shapes" in resolved  # the base file's model, merged
    run([sys.executable, "-m", "tcl", "make-data", "--train-images", "24", "--val-images", "8", "--quiet"], work, env)
    assert (work / "data" / "shapes" / "annotations" / "captions_train2014.json").is_file()
    run([sys.executable, "-m", "tcl", "pretrain", "--config", "pretrain_tiny", "train.max_steps=3",
         "train.batch_size=8", "model.queue_size=64", "data.num_workers=0", "eval.retrieval_file=null"], work, env)
    assert (work / "runs" / "pretrain_tiny" / "latest").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["data", "runs"]
