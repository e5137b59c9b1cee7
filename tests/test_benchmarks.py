"""The benchmark scripts run and write what docs/BENCHMARKS.md reads (their numbers are measured by the scripts
themselves, never asserted here)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_research(name):
    """An experiment of research/, or a probe of research/probes/."""
    path = REPO / "research" / f"{name}.py"
    return load_module(name, path if path.is_file() else REPO / "research" / "probes" / f"{name}.py")


def load_benchmark(name):
    """A benchmark of benchmarks/."""
    return load_module(name, REPO / "benchmarks" / f"{name}.py")


@pytest.mark.slow
def test_bench_startup_times_every_command(shapes_root, tmp_path, capsys):
    out = tmp_path / "startup.json"
    assert load_benchmark("bench_startup").main(["--data-root", str(shapes_root), "--rounds", "1", "--json",
                                              str(out)]) == 0
    times = json.loads(out.read_text())
    assert len(times) == 6 and all(len(v) == 1 and v[0] > 0 for v in times.values())
    assert "| tcl pretrain --help |" in capsys.readouterr().out


def test_bench_eval_metric_only_writes_its_json(tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert load_benchmark("bench_eval").main(["--metric-only", "--questions", "3000", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["metric_questions_per_s"] > 0 and result["metric"]["identical_to_per_question"]
    assert result["metric"]["questions"] == 3000 and "| official VQA accuracy" in capsys.readouterr().out


def test_bench_train_tiny_reports_mfu(tmp_path):
    out = tmp_path / "train.json"
    assert load_benchmark("bench_train").main(["--configs", "tiny", "--steps", "1", "--warmup", "0", "--no-objectives",
                                            "--json", str(out)]) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["config"] == "tiny" and run["flops_per_step"] > 1e9 and 0 < run["mfu"] < 1.5


def test_bench_train_takes_a_device_and_a_batch_and_says_when_there_is_no_gpu(tmp_path):
    bench = load_benchmark("bench_train")
    out = tmp_path / "train.json"
    assert bench.main(["--configs", "tiny", "--steps", "1", "--warmup", "0", "--no-objectives", "--device", "cpu",
                       "--batch", "8", "--json", str(out)]) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["batch"] == 8 and run["device"] == "cpu" and not run["compiled"]
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            bench.main(["--configs", "tiny", "--device", "cuda", "--json", str(out)])


def test_bench_train_ab_builds_one_arm_per_setting_and_interleaves_them(tmp_path, capsys):
    bench = load_benchmark("bench_train")
    arms = bench.ab_arms(["train.fused_adamw=false:true", "model.teacher_dropout=true:false"])
    assert list(arms.values()) == [["train.fused_adamw=false", "model.teacher_dropout=true"],
                                   ["train.fused_adamw=true", "model.teacher_dropout=true"],
                                   ["train.fused_adamw=false", "model.teacher_dropout=false"],
                                   ["train.fused_adamw=true", "model.teacher_dropout=false"]]
    out = tmp_path / "ab.json"
    assert bench.main(["--configs", "tiny", "--steps", "2", "--warmup", "0", "--ab", "train.fused_adamw=false:true",
                       "--json", str(out)]) == 0
    result = json.loads(out.read_text())["arms"]
    assert [arm["steps"] for arm in result] == [2, 2] and result[0]["ratio_to_a"] == 1.0
    assert "| train.fused_adamw=true |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="expected KEY=A:B"):
        bench.ab_arms(["train.fused_adamw=true"])


def test_compare_official_builds_our_side_at_the_official_sizes_and_checks_its_folders(tmp_path):
    """The official side needs a checkout of uta-smile/TCL and its pinned libraries, which CI does not have: our side
    and the argument checks are tested here; docs/BENCHMARKS.md has the measured comparison."""
    module = load_benchmark("compare_official")
    for settings in ("official", "tiny"):
        losses = module.ours_step_fn(module.CONFIGS["tiny"], settings, torch.device("cpu"))()
        assert set(losses) == {"mlm", "ita", "itm"} and all(v == v for v in losses.values())  # finite, not NaN
    with pytest.raises(SystemExit, match="--tcl-checkout .*: not the folder"):
        module.main(["--tcl-checkout", str(tmp_path), "--deps", str(tmp_path)])


@pytest.mark.slow
def test_bench_serve_times_both_servers_and_predict(shapes_root, tmp_path, capsys):
    bench = load_benchmark("bench_serve")
    out = tmp_path / "serve.json"
    assert bench.main(["--data-root", str(shapes_root), "--clients", "2", "--seconds", "0.5", "--predict-images", "3",
                       "--predict-size", "64", "--rounds", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["clients"] for row in result["serve"]] == [2, 2] and all(r["requests"] > 0 for r in result["serve"])
    assert [row["arm"] for row in result["predict"]] == ["--workers 0", "--workers default"]
    assert all(row["questions"] > 3 and row["file_s"] > 0 for row in result["predict"])
    assert "| one at a time (--max-batch 1) | 2 |" in capsys.readouterr().out


def test_bench_vqa_step_times_both_batch_layouts(tmp_path, capsys):
    out = tmp_path / "vqa_step.json"
    assert load_benchmark("bench_vqa_step").main(["--configs", "tiny", "--steps", "1", "--warmup", "0",
                                               "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["questions"] == 32 and row["images_shared"] == 6
    assert set(row["step_s"]) == {"one image per question", "shared images"} and row["speedup"] > 0
    assert "| tiny | 32 | 6 |" in capsys.readouterr().out


def test_bench_loading_times_samples_and_steps_beside_workers(shapes_root, tmp_path, capsys):
    out = tmp_path / "loading.json"
    assert load_benchmark("bench_loading").main([f"data.root={shapes_root}", "train.batch_size=4", "--workers", "0",
                                              "--warmup", "0", "--steps", "2", "--samples", "8", "--json",
                                              str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["loading"]["sample_ms"] > 0 and result["loading"]["view_ms_torchvision_v2"] > 0
    (row,) = result["steps"]
    assert row["workers"] == 0 and row["fresh_s"] > 0 and row["again_s"] > 0 and row["ratio"] > 0
    assert "| 0 |" in capsys.readouterr().out


def test_toy2d_experiment_runs_and_writes_its_table(tmp_path):
    out = tmp_path / "toy"
    assert load_research("experiment_toy2d").main(["--seeds", "2", "--epochs", "1", "--flow-steps", "20",
                                                 "--objectives", "infonce", "debiased_pos", "--no-self",
                                                 "--out", str(out)]) == 0
    result = json.loads((out / "toy2d.json").read_text())
    assert set(result["results"]) == {"infonce", "debiased_pos"} and result["settings"]["include_self"] is False
    assert len(result["results"]["infonce"]["cosine"]) == 2
    assert (out / "toy2d_embeddings.png").stat().st_size > 0 and "L_Pos" in (out / "toy2d.md").read_text()


def test_vqa_learning_probe_reports_every_question_kind(shapes_root, tmp_path):
    out = tmp_path / "probe.json"
    assert load_research("probe_vqa_learning").main(["--config", "vqa_tiny", "--epochs", "1",
                                                   "--json", str(out), "--group-by-image", f"data.root={shapes_root}",
                                                   "train.batch_size=16", "data.num_workers=0"]) == 0
    epoch = json.loads(out.read_text())["epochs"][0]
    assert set(epoch["val"]) == {"all", "color", "shape", "count", "existence", "position", "relation"}
    assert all(0 <= v <= 100 for v in epoch["val"].values()) and 0 <= epoch["train"] <= 100


def test_vqa_learning_probe_isolates_question_kinds(shapes_root, tmp_path):
    out = tmp_path / "probe.json"
    assert load_research("probe_vqa_learning").main(["--config", "vqa_tiny", "--epochs", "1",
                                                   "--json", str(out), "--kinds", "shape,count",
                                                   f"data.root={shapes_root}", "train.batch_size=16"]) == 0
    assert set(json.loads(out.read_text())["epochs"][0]["val"]) == {"all", "shape", "count"}


@pytest.mark.slow
def test_objective_study_runs_every_stage_resumes_and_writes_its_table(shapes_root, tmp_path, capsys):
    # One seed, not the default's 0: every stage of a seed runs once per seed, and a second seed's stages are the same
    # stages again (their mean ± std over seeds is checked below on the runs, without running them twice).
    argv = ["--out", str(tmp_path), "--arms", "infonce_uota", "--seeds", "1",
            "--pretrain-steps", "2", "--finetune-epochs", "1", "--protocol", "thesis", "--max-train-questions", "40",
            "--max-eval-questions", "20", f"data.root={shapes_root}", "train.batch_size=8", "model.queue_size=32",
            "data.num_workers=0", "eval.batch_size=16"]
    study = load_research("experiment_objectives")
    assert study.main(argv) == 0
    folder = tmp_path / "thesis"
    runs = json.loads((folder / "results.json").read_text())["runs"]
    assert [(r["arm"], r["seed"]) for r in runs] == [("infonce_uota", 1)]
    assert all(0 <= r["vqa_accuracy"] <= 100 and {"alignment", "uniformity_image"} <= set(r) for r in runs)
    config = (folder / "infonce_uota" / "seed1" / "vqa" / "config.yaml").read_text()
    assert "freeze_vision: true" in config and "max_train_questions: 40" in config and "seed: 1" in config
    pretrained = tmp_path / "pretraining" / "infonce_uota-seed1-steps2"
    assert "uota: true" in (pretrained / "config.yaml").read_text()
    assert "| infonce_uota | 1 |" in (folder / "table.md").read_text() and (folder / "objectives.png").is_file()
    # Two seeds' runs make one row of the table: their mean ± std.
    (run,) = runs
    other = {**run, "seed": 2, "vqa_accuracy": run["vqa_accuracy"] + 2}
    (row,) = study.summarise([run, other], ["infonce_uota"])
    assert row["seeds"] == 2 and row["vqa_accuracy"] == pytest.approx((run["vqa_accuracy"] + 1, 2 ** 0.5))
    assert "| infonce_uota | 2 |" in study.markdown([row], "thesis")
    pretrain_argv, _ = study.stage_arguments(study.parse_args(["--arms", "debiased_pos_no_self"]),
                                             "debiased_pos_no_self", 2, tmp_path)
    assert {"loss.objective=debiased_pos", "loss.include_self=false", "train.seed=2"} <= set(pretrain_argv)
    capsys.readouterr()
    assert study.main(argv) == 0  # a second call only summarises
    assert "already in" in capsys.readouterr().out
    # The other protocol fine-tunes from the same pretraining folders instead of pretraining again.
    default_argv = [a for a in argv if a not in ("--protocol", "thesis")]
    assert study.main(default_argv) == 0
    assert "reusing the pretraining" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "default" / "results.json").read_text())["runs"]) == 1


def test_shape_perception_probe_reports_held_out_accuracy(tmp_path):
    out = tmp_path / "shape.json"
    assert load_research("probe_shape_perception").main(["--config", "vqa_tiny", "--steps",
                                                       "3", "--train-images", "40", "--json", str(out)]) == 0
    history = json.loads(out.read_text())["history"]
    assert history[-1]["step"] == 3 and 0 <= history[-1]["test_accuracy"] <= 100


def test_shape_probe_asks_the_vqa_model_about_one_of_several_objects(shapes_root, tmp_path):
    probe = load_research("probe_shape_perception")
    images, labels, colours = probe.scene_images(30, 64, np.random.default_rng(0), max_objects=3)
    assert images.shape == (30, 3, 64, 64) and set(labels.tolist()) <= {0, 1, 2, 3} and len(colours) == 30
    out = tmp_path / "shape.json"
    assert probe.main(["--config", "vqa_tiny", "--steps", "2", "--train-images", "20",
                       "--through-vqa", "--max-objects", "3", "--loss", "bce", "--json", str(out),
                       f"data.root={shapes_root}"]) == 0
    result = json.loads(out.read_text())
    assert result["through_vqa"] and result["max_objects"] == 3 and result["loss"] == "bce"
    assert 0 <= result["history"][-1]["test_accuracy"] <= 100


def test_frozen_shape_probe_fits_separable_features_and_reports_both_tasks(tmp_path):
    probe = load_research("probe_frozen_shapes")
    labels = torch.arange(40) % 4
    features = torch.nn.functional.one_hot(labels, 4).float() * 3 + 0.1 * torch.randn(40, 4)
    assert torch.equal(probe.fit_linear(features[:32], labels[:32], features[32:], multilabel=False), labels[32:])
    images, present = probe.presence_scenes(12, 64, np.random.default_rng(0))
    assert images.shape == (12, 3, 64, 64) and present.shape == (12, 4) and (present.sum(1) >= 1).all()
    out = tmp_path / "frozen.json"
    assert probe.main(["--run", "random", "--train-images", "24", "--test-images", "12", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert 0 <= result["lone_shape_accuracy"] <= 100
    assert set(result["presence_accuracy"]) == set(result["presence_floor"]) == {"circle", "square", "triangle",
                                                                               "cross"}


def test_shape_probe_bce_matches_the_vqa_classifier_loss():
    probe = load_research("probe_shape_perception")
    logits, labels = torch.tensor([[2.0, -1.0, 0.0, 0.5]]), torch.tensor([0])
    expected = -(torch.log(torch.sigmoid(torch.tensor(2.0))) + torch.log(1 - torch.sigmoid(torch.tensor(-1.0)))
                 + torch.log(1 - torch.sigmoid(torch.tensor(0.0))) + torch.log(1 - torch.sigmoid(torch.tensor(0.5))))
    assert torch.isclose(probe.shape_loss("bce", logits, labels), expected)
    assert torch.isclose(probe.shape_loss("ce", logits, labels), -torch.log_softmax(logits, 1)[0, 0])


def test_breakdown_splits_val_results_by_kind_and_object_count(shapes_root, tmp_path, capsys):
    from tcl.config import load_config, save_config

    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config("vqa_tiny", [f"data.root={shapes_root}"]), run / "config.yaml")
    annotations = json.loads((shapes_root / "annotations/v2_mscoco_val2014_annotations.json").read_text())
    # The human majority answer everywhere: every kind scores 100 %.
    results = [{"question_id": a["question_id"], "answer": a["multiple_choice_answer"]}
               for a in annotations["annotations"]]
    (run / "vqa_results_val2014.json").write_text(json.dumps(results))
    out = tmp_path / "breakdown.json"
    assert load_research("breakdown_vqa_results").main(["--run", str(run), "--json", str(out)]) == 0
    table = json.loads(out.read_text())["accuracy"]
    assert sum(row["questions"] for key, row in table.items() if key.endswith("| all")) == len(results)
    assert all(row["accuracy"] == 100.0 for row in table.values())
    assert "| shape | all |" in capsys.readouterr().out


def test_side_probe_labels_each_scene_by_where_its_named_object_is(shapes_root, tmp_path):
    probe = load_research("probe_shape_perception")
    images, labels, _ = probe.scene_images(40, 64, np.random.default_rng(0), max_objects=1, task="side")
    # The lone object is the only non-background colour: its centre of mass says left (0) or right (1).
    background = images[:, :, 0, 0][:, :, None, None]
    columns = (images - background).abs().sum(1).sum(1)  # [N, 64]: object mass per image column
    centre = (columns * torch.arange(64.0)).sum(1) / columns.sum(1)
    assert torch.equal((centre > 32).long(), labels) and set(labels.tolist()) == {0, 1}
    out = tmp_path / "side.json"
    assert probe.main(["--config", "vqa_tiny", "--steps", "2", "--train-images", "20",
                       "--through-vqa", "--task", "side", "--json", str(out), f"data.root={shapes_root}"]) == 0
    assert json.loads(out.read_text())["task"] == "side"


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_accelerate_state")
def test_transfer_study_fine_tunes_both_arms_per_budget_and_resumes(shapes_root, tmp_path, capsys):
    from tcl.engine.commands import pretrain

    pretrained = tmp_path / "pretrain"
    small = [f"data.root={shapes_root}", "train.batch_size=8", "model.queue_size=32", "data.num_workers=0",
             "eval.batch_size=16"]
    # The pretraining the study starts from, in this process (what the study runs are its own processes): only its
    # weights are read, so it skips the retrieval evaluation.
    assert pretrain(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"train.output_dir={pretrained}",
                     "train.max_steps=2", "eval.retrieval_file=null", *small]) == 0
    argv = [*small, "train.epochs=1", "eval.max_questions=20", "--pretrained", str(pretrained), "--budgets", "40",
            "--seeds", "0", "--out", str(tmp_path / "transfer")]
    study = load_research("experiment_transfer")
    assert study.main(argv) == 0
    folder = tmp_path / "transfer"
    runs = json.loads((folder / "results.json").read_text())["runs"]
    assert [(r["budget"], r["arm"]) for r in runs] == [("40", "pretrained"), ("40", "scratch")]
    assert "max_train_questions: 40" in (folder / "40-seed0-scratch" / "config.yaml").read_text()
    assert "init: null" in (folder / "40-seed0-scratch" / "config.yaml").read_text()
    assert str(pretrained) in (folder / "40-seed0-pretrained" / "config.yaml").read_text()
    assert "| 40 |" in (folder / "table.md").read_text() and (folder / "transfer.png").is_file()
    capsys.readouterr()
    assert study.main(argv) == 0  # everything is in results.json: no run again
    assert "fine-tune" not in capsys.readouterr().err
    assert len(json.loads((folder / "results.json").read_text())["runs"]) == 2


@pytest.mark.slow
def test_objective_study_pretraining_only_records_retrieval(shapes_root, tmp_path):
    argv = ["--out", str(tmp_path), "--arms", "debiased_neg", "--seeds", "0", "--pretrain-steps", "2",
            "--no-finetune", f"data.root={shapes_root}", "train.batch_size=8", "model.queue_size=32",
            "data.num_workers=0", "eval.batch_size=16", "eval.retrieval_images=8"]
    assert load_research("experiment_objectives").main(argv) == 0
    runs = json.loads((tmp_path / "pretraining_only" / "results.json").read_text())["runs"]
    assert len(runs) == 1 and "vqa_accuracy" not in runs[0]
    assert {"i2t_r1", "t2i_r1", "itm_accuracy", "alignment"} <= set(runs[0])
    assert "| debiased_neg | 1 |" in (tmp_path / "pretraining_only" / "table.md").read_text()
    assert (tmp_path / "pretraining_only" / "objectives.png").is_file()


def test_bench_index_builds_the_streamed_index_of_a_generated_list(tmp_path, capsys):
    bench = load_benchmark("bench_index")
    out = tmp_path / "index.json"
    assert bench.main(["--entries", "3000", "--compare-json-load", "--folder", str(tmp_path / "work"),
                       "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["streamed_index"]["rows"] == result["json_load"]["rows"] == 3000
    assert result["streamed_index"]["peak_rss_mb"] > 0 and result["list_mb"] > 0
    assert not (tmp_path / "work").exists()  # the list and its index are deleted


def random_photos(folder: Path, count: int = 4) -> Path:
    """``count`` random 640 x 480 JPEGs (COCO's size) in ``folder``."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(folder / f"{index}.jpg")
    return folder


def test_bench_loader_times_our_pretraining_samples_per_core(tmp_path, capsys):
    bench = load_benchmark("bench_loader")
    photos = random_photos(tmp_path / "photos")
    out = tmp_path / "loader.json"
    assert bench.main(["--photos", str(photos), "--sizes", "64", "--rounds", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["photos"] == 4 and result["sizes"]["64"]["ours"]["samples_per_s_per_core"] > 0
    assert "64 px: ours" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--tcl-checkout", str(tmp_path)])  # the official side needs its OpenCV folder too


def test_bench_vqa_loader_times_both_ways_on_the_world_and_on_photographs(shapes_root, tmp_path, capsys):
    bench = load_benchmark("bench_vqa_loader")
    photos = random_photos(tmp_path / "photos")
    out = tmp_path / "vqa_loader.json"
    assert bench.main(["--photos", str(photos), "--shapes", str(shapes_root), "--work", str(tmp_path / "work"),
                       "--batches", "1", "--batch-size", "8", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert len(results) == 2
    for result in results.values():
        assert result["questions_per_batch"] == 8 and 1 <= result["images_per_batch"] < 8
        assert result["per question"] > 0 and result["per image"] > 0
    assert "| vqa, 640x480 photographs (384 px) | 8 /" in capsys.readouterr().out


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_bench_demo_steps_splits_a_real_step_into_loading_passes_and_parts(stage, shapes_root, tmp_path, capsys):
    out = tmp_path / "steps.json"
    assert load_benchmark("bench_demo_steps").main([stage, f"data.root={shapes_root}", "train.batch_size=8",
                                                    "--threads", "1", "--steps", "2", "--warmup", "0",
                                                    "--json", str(out)]) == 0
    figures = json.loads(out.read_text())["milliseconds"]
    parts = {name for name in figures if name.startswith("forward: ")}
    expected = ({"forward: encode_image", "forward: _teacher", "forward: _itm", "forward: _mlm", "forward: _grounding"}
                if stage == "pretrain" else {"forward: vision_encoder", "forward: fusion_encoder",
                                             "forward: text_decoder"})
    assert expected <= parts and all(figures[name] > 0 for name in ("loading", "forward", "backward", "step"))
    assert figures["step"] >= figures["forward"] + figures["backward"]
    assert f"| {stage} (1 thread(s)) |" in capsys.readouterr().out


def test_relation_probe_flips_each_relation_word_once():
    probe = load_research("probe_relation_words")
    assert probe.flip_relation("a red circle to the left of a blue square.") == \
        "a red circle to the right of a blue square."
    assert probe.flip_relation("a gray cross above an orange triangle.") == "a gray cross below an orange triangle."
    assert probe.flip_relation("a large red circle in the top left of the image.") == \
        "a large red circle in the top left of the image."  # a location, not a relation: left alone


def test_relation_roles_probe_swaps_the_two_objects_and_reads_their_halves():
    probe = load_research("probe_relation_roles")
    assert probe.swapped("is the small red circle left of the blue object?") == \
        "is the blue object left of the small red circle?"
    objects = [({"small", "red", "circle"}, 10.0, 50.0), ({"large", "blue", "square"}, 40.0, 45.0)]
    assert probe.halves_differ(objects, "is the red circle left of the blue square?", 64)  # x: 10 and 40
    assert not probe.halves_differ(objects, "is the red circle above the blue square?", 64)  # y: 50 and 45
