"""The real-loop benchmark runs ``tcl pretrain`` itself at the tiny size on the CPU and reports what the GPU check
reads (its numbers are measured by the script, never asserted here)."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_real_loop_benchmark_reports_throughput_mfu_and_memory(tmp_path, capsys):
    out = tmp_path / "loop.json"
    assert load("bench_train_loop").main(["--size", "tiny", "--steps", "4", "--log-every", "2", "--workers", "1",
                                          "--loader", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "runs"),
                                          "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["run"] == "fp32" and run["samples_per_s"] > 0 and 0 < run["mfu"] < 1 and run["peak_memory_mb"] > 0
    assert result["flops_per_sample"] > 0 and result["matmul_flops_per_s"]["fp32"] > 0
    assert result["loader_samples_per_s"] > 0 and result["loader_batches"] == 4
    # the run was the real loop: the loader read the generated JPEGs and the trainer wrote its log and checkpoint
    assert (tmp_path / "runs/fp32/checkpoint-00000004").is_dir()
    assert len(list((tmp_path / "data/images").glob("*.jpg"))) == 64
    assert "| fp32 | 8 | 1 |" in capsys.readouterr().out


def test_runs_are_named_by_precision_and_settings():
    bench = load("bench_train_loop")
    with pytest.raises(SystemExit):
        bench.main(["--runs", "fp16"])
    with pytest.raises(SystemExit):
        bench.main(["--runs", "bf16+fast"])


def test_compare_official_has_the_paper_size():
    compare = load("compare_official")
    paper = compare.CONFIGS["paper"]
    assert (paper["image"], paper["patch"], paper["vision_width"], paper["vision_depth"]) == (256, 16, 768, 12)
    assert (paper["hidden"], paper["text_layers"] + paper["fusion_layers"], paper["queue"], paper["batch"]) == (
        768, 12, 65536, 64)


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_as_a_cpu_dry_run(tmp_path):
    """benchmarks/gpu_check.sh with TCL_GPU_CHECK_DEVICE=cpu: every stage at tiny sizes, one JSON file."""
    import os
    import subprocess

    out = tmp_path / "gpu_check.json"
    subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh"), str(out)], check=True, timeout=600,
                   env={**os.environ, "TCL_GPU_CHECK_DEVICE": "cpu"}, capture_output=True)
    result = json.loads(out.read_text())
    assert all(result[stage]["status"] == 0 for stage in ("environment", "syncs", "loop")), result
    assert result["syncs"]["result"]["syncs_in_steps"] == 0  # CUDA's debug mode does nothing on the CPU
    assert result["loop"]["result"]["runs"][0]["samples_per_s"] > 0
    assert result["official"] == {"status": "not run"}  # no official checkout given
