"""The precision a run trains in: the config's choice, or with ``auto`` the launcher's bf16/fp16, else bf16 on a GPU
that supports it, else fp32; the Accelerator gets what was resolved."""

from pathlib import Path

import pytest

from tcl.config import load_config
from tcl.engine.runtime import build_accelerator, resolve_precision
from tcl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("setting, launcher, gpu_bf16, expected", [
    ("auto", None, True, "bf16"),  # a bf16 GPU, no launcher: bf16
    ("auto", None, False, "no"),  # the CPU, or a GPU without bf16: fp32
    ("auto", "no", True, "bf16"),  # accelerate launch sets "no" when nothing is named
    ("auto", "bf16", False, "bf16"),  # the launcher names one: it is honoured
    ("auto", "fp16", True, "fp16"),
    ("no", "bf16", True, "no"),  # the config names one: it wins over the launcher
    ("bf16", "no", False, "bf16"),
    ("fp16", None, True, "fp16"),
])
def test_resolved_precision(setting, launcher, gpu_bf16, expected):
    assert resolve_precision(setting, launcher, gpu_bf16) == expected


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("setting, launcher, expected", [("auto", None, "no"), ("auto", "bf16", "bf16"),
                                                        ("no", "bf16", "no"), ("bf16", "no", "bf16")])
def test_the_accelerator_gets_the_resolved_precision(monkeypatch, setting, launcher, expected):
    if launcher is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    config = load_config(REPO / "configs/pretrain_tiny.yaml", [f"train.mixed_precision={setting}"])
    assert build_accelerator(config).mixed_precision == expected


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_fp16_without_a_gpu_names_who_asked(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ConfigError, match="fp16 \\(named by the launcher\\) needs a GPU"):
        build_accelerator(load_config(REPO / "configs/pretrain_tiny.yaml"))


def test_the_paper_configs_train_in_bf16_where_supported():
    for name in ("pretrain_4m", "vqa", "vqa_tcl_exact"):
        assert load_config(REPO / f"configs/{name}.yaml").train.mixed_precision == "auto", name
