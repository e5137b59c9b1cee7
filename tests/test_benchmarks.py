"""The benchmark scripts run and write what docs/BENCHMARKS.md reads (their numbers are measured by the scripts
themselves, never asserted here)."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_eval_metric_only_writes_its_json(tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert load_script("bench_eval").main(["--metric-only", "--questions", "3000", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["metric_questions_per_s"] > 0 and result["metric"]["identical_to_per_question"]
    assert result["metric"]["questions"] == 3000 and "| official VQA accuracy" in capsys.readouterr().out


def test_bench_train_tiny_reports_mfu(tmp_path):
    out = tmp_path / "train.json"
    assert load_script("bench_train").main(["--configs", "tiny", "--steps", "1", "--warmup", "0", "--no-objectives",
                                            "--json", str(out)]) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["config"] == "tiny" and run["flops_per_step"] > 1e9 and 0 < run["mfu"] < 1.5


def test_toy2d_experiment_runs_and_writes_its_table(tmp_path):
    out = tmp_path / "toy"
    assert load_script("experiment_toy2d").main(["--seeds", "2", "--epochs", "1", "--flow-steps", "20",
                                                 "--objectives", "infonce", "debiased_pos", "--no-self",
                                                 "--out", str(out)]) == 0
    result = json.loads((out / "toy2d.json").read_text())
    assert set(result["results"]) == {"infonce", "debiased_pos"} and result["settings"]["include_self"] is False
    assert len(result["results"]["infonce"]["cosine"]) == 2
    assert (out / "toy2d_embeddings.png").stat().st_size > 0 and "L_Pos" in (out / "toy2d.md").read_text()


def test_vqa_learning_probe_reports_every_question_kind(shapes_root, tmp_path):
    out = tmp_path / "probe.json"
    assert load_script("probe_vqa_learning").main(["--config", str(REPO / "configs/vqa_tiny.yaml"), "--epochs", "1",
                                                   "--json", str(out), f"data.root={shapes_root}",
                                                   "train.batch_size=16", "data.num_workers=0"]) == 0
    epoch = json.loads(out.read_text())["epochs"][0]
    assert set(epoch["val"]) == {"all", "colour", "shape", "count", "existence", "position", "relation"}
    assert all(0 <= v <= 100 for v in epoch["val"].values()) and 0 <= epoch["train"] <= 100
