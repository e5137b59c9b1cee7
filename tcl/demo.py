"""``tcl demo``: the main job on the embedded default, end to end on 2 CPU cores.

Generates the shapes data if absent, pretrains the tiny model, fine-tunes it on VQA, fine-tunes the same model from
scratch with the same budget, evaluates both on the held-out val split next to the blind baselines, answers three
example questions, and writes ``demo_results.json`` and plots to the output folder, and the fine-tuned model as a
ready-to-use folder (``model/``, for ``tcl.load_vqa`` and ``tcl predict``). Each training stage is a ``tcl``
command run as a process of its own, as a user would run it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tcl.atomic import write_json_atomic
from tcl.config import load_config

logger = logging.getLogger("tcl.demo")
# The region head's held-out accuracy (the pretraining evaluation writes it when loss.region_class_weight > 0).
REGION_KEYS = ("region_category_accuracy", "region_attribute_accuracy", "region_position_accuracy")
# The shipped configs of the demo's stages.
PRETRAIN_CONFIG, VQA_CONFIG = "pretrain_tiny", "vqa_tiny"


def run_stage(name: str, argv: list[str]) -> None:
    """Runs ``tcl <argv>`` (``pretrain ...``, ``finetune-vqa ...``) as a process of its own, its output on this
    one's, as a user would from the command line: each stage starts from a fresh torch and accelerate (whose state is
    process-wide). A non-zero exit code stops the caller with a message naming the stage; so does an interruption,
    after the stage's process has stopped."""
    from tcl.errors import TclError

    logger.info("stage: %s", name)
    process = subprocess.Popen([sys.executable, "-m", "tcl", *argv])
    try:
        code = process.wait()
    except BaseException:
        process.terminate()
        process.wait()
        raise
    if code != 0:
        raise TclError(f"stage '{name}' failed with exit code {code}; see the messages above.")


def run_stages_at_once(stages: dict[str, tuple[list[str], Path]], poll_s: float = 2.0) -> None:
    """Runs ``tcl <argv>`` for every stage (name -> (argv, log file)) as a process of its own, all at once, each on
    one thread (``OMP_NUM_THREADS=1``), its output in its log file; a bar counts their optimizer steps together
    (from each run's log and ``metrics.jsonl``). When one fails, the others are stopped and the error names the
    stage, its exit code and its log's last lines; so does an interruption of this process."""
    from tqdm.auto import tqdm

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running: dict[str, subprocess.Popen] = {}
    totals: dict[str, int] = {}  # each run's announced steps, once its log has them
    try:
        for name, (argv, log) in stages.items():
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "wb") as sink:  # the child keeps its own handle
                running[name] = subprocess.Popen([sys.executable, "-m", "tcl", *argv], stdout=sink,
                                                 stderr=subprocess.STDOUT, env=env)
            logger.info("stage: %s (its own process, one thread; log %s)", name, log)
        with tqdm(desc=" + ".join(stages), unit="step", total=None) as bar:
            while any(process.poll() is None for process in running.values()):
                _show_steps(bar, stages, totals)
                _raise_on_failure(running, stages)
                time.sleep(poll_s)
            _show_steps(bar, stages, totals)
        _raise_on_failure(running, stages)
    except BaseException:
        for process in running.values():
            if process.poll() is None:
                process.terminate()
        for process in running.values():
            process.wait()
        raise


def _raise_on_failure(running: dict[str, subprocess.Popen], stages: dict[str, tuple[list[str], Path]]) -> None:
    from tcl.errors import TclError

    for name, process in running.items():
        code = process.poll()
        if code:
            log = stages[name][1]
            tail = "\n".join(log.read_text(errors="replace").replace("\r", "\n").splitlines()[-8:])
            raise TclError(f"stage '{name}' failed with exit code {code}; its log {log} ends with:\n{tail}")


_STEP_RANGE = re.compile(r"\(steps (\d+) to (\d+)\)")


def _show_steps(bar, stages: dict[str, tuple[list[str], Path]], totals: dict[str, int]) -> None:
    """Sets the bar to the steps the stages' runs have logged, out of the steps their logs announced (read once,
    into ``totals``)."""
    done = 0
    for name, (argv, log) in stages.items():
        if name not in totals and log.is_file():
            announced = _STEP_RANGE.search(log.read_text(errors="replace"))
            if announced:
                totals[name] = int(announced.group(2))
        done += _last_logged_step(_output_dir(argv) / "metrics.jsonl")
    total = sum(totals.values())
    if total and bar.total != total:
        bar.total = total
    bar.n = done
    bar.refresh()


def _output_dir(argv: list[str]) -> Path:
    """The run folder an argument list names (its last ``train.output_dir=``, the one the run uses)."""
    return Path(next(arg.split("=", 1)[1] for arg in reversed(argv) if arg.startswith("train.output_dir=")))


def _last_logged_step(metrics: Path) -> int:
    if not metrics.is_file():
        return 0
    lines = metrics.read_text(errors="replace").strip().splitlines()
    try:
        return int(json.loads(lines[-1]).get("step", 0)) if lines else 0
    except ValueError:  # a line being written
        return 0


def fine_tune_both(out: Path, common: list[str]) -> None:
    """The two fine-tunings: from the pretraining (``out/vqa``) and from scratch (``out/vqa_scratch``). On a CPU
    machine with two or more cores they run at once, one thread each: the tiny model's small operations gain little
    from a second thread (one epoch 400 against 328 samples/s) and two processes keep both cores busy (both arms'
    first epoch in 59 instead of 90 s; docs/BENCHMARKS.md, "The demo's two fine-tunings at once"). Elsewhere one
    after the other."""
    arms = {"fine-tune from pretraining": ("vqa", f"vqa.init={out / 'pretrain'}"),
            "fine-tune from scratch": ("vqa_scratch", "vqa.init=null")}
    argv = {name: ["finetune-vqa", "--config", VQA_CONFIG, "--overwrite", f"train.output_dir={out / folder}", init,
                   *common] for name, (folder, init) in arms.items()}
    if _cores() >= 2 and not _cuda():
        run_stages_at_once({name: (argv[name], out / f"{folder}.log") for name, (folder, _) in arms.items()})
        return
    for name, args in argv.items():
        run_stage(name, args)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def prepare_world(root: str | Path, shapes) -> None:
    """Generates the demo's world in ``root`` unless it holds the one ``data.shapes`` describes: a world made with
    other settings (an older generator's, or other sizes) is generated again, so the demo's numbers are its config's."""
    from tcl.make_data import dataset_exists, generated_with, generator_settings, make_shapes_dataset

    settings = generator_settings(**asdict(shapes))
    recorded = generated_with(root) if dataset_exists(root) else None
    if recorded != settings:
        if recorded is not None:
            logger.info("%s holds a world generated with %s; generating the one data.shapes describes: %s", root,
                        recorded, settings)
        make_shapes_dataset(root, **settings)


def run_demo(out: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Runs every stage and returns (and writes) the demo's numbers."""
    from tcl.make_data import summarize

    start = time.perf_counter()
    out = Path(out)
    overrides = list(overrides or [])
    config = load_config(VQA_CONFIG, overrides)
    root, shapes = config.data.root, config.data.shapes
    prepare_world(root, shapes)
    summary = summarize(root)
    common = [f"data.root={root}", *overrides]
    # Each stage redoes its run in the demo's folder (--overwrite): running the demo again replaces its results.
    run_stage("pretrain", ["pretrain", "--config", PRETRAIN_CONFIG, "--overwrite",
                           f"train.output_dir={out / 'pretrain'}", *common])
    fine_tune_both(out, common)
    run_stage("blind evaluation", ["evaluate-vqa", "--run", str(out / "vqa"), "--blind"])
    scores = {name: read_scores(out / name) for name in ("vqa", "vqa_scratch")}
    retrieval = read_retrieval(out / "pretrain", overrides)
    blind_model = read_scores(out / "vqa", blind=True)
    results = {
        "vqa_accuracy": scores["vqa"]["overall"], "hit_rate": scores["vqa"]["hit_rate"],
        "per_answer_type": scores["vqa"]["per_answer_type"],
        "scratch_accuracy": scores["vqa_scratch"]["overall"],
        "scratch_per_answer_type": scores["vqa_scratch"]["per_answer_type"],
        "per_family": scores["vqa"].get("per_family", {}),
        "scratch_per_family": scores["vqa_scratch"].get("per_family", {}),
        "blind_accuracy": summary["blind_val_accuracy"], "model_blind_accuracy": blind_model["overall"],
        "blind_per_answer_type": summary["blind_val_per_answer_type"],
        "model_blind_per_answer_type": blind_model["per_answer_type"],
        **retrieval,
        "examples": _examples(out / "vqa"),
        "minutes": (time.perf_counter() - start) / 60.0,
    }
    out.mkdir(parents=True, exist_ok=True)
    from tcl.inference import VQAPipeline

    VQAPipeline.from_run(out / "vqa").save_pretrained(out / "model")
    results["model_dir"] = str(out / "model")
    write_json_atomic(results, out / "demo_results.json", indent=2)
    _plot(results, out / "demo_accuracy.png")
    print(format_results(results))
    return results


def read_retrieval(pretrain_dir: Path, overrides: list[str]) -> dict[str, float]:
    """The pretraining stage's final zero-shot retrieval, in percent (empty when the run had no retrieval file)."""
    from tcl.engine.evaluate_retrieval import results_name

    path = pretrain_dir / results_name(load_config(PRETRAIN_CONFIG, overrides))
    if not path.is_file():
        return {}
    results = json.loads(path.read_text())
    return {f"retrieval_{key}": results[key] for key in ("i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5")} | {
        "itm_accuracy": results["itm_accuracy"], "mlm_word_accuracy": results.get("mlm_word_accuracy"),
        "retrieval_images": results["images"],
        "retrieval_file": str(path)} | {key: results[key] for key in REGION_KEYS if key in results}


def read_scores(run_dir: Path, blind: bool = False) -> dict[str, Any]:
    """The scores a fine-tuning run's own evaluation wrote (``vqa_scores_<tag>.json``, named by the split and
    ``eval.max_questions`` of its config.yaml)."""
    from tcl.evaluation.results import vqa_output_tag

    config = load_config(Path(run_dir) / "config.yaml")
    tag = vqa_output_tag(config.data.vqa_eval, blind, config.eval.max_questions)
    return json.loads((Path(run_dir) / f"vqa_scores_{tag}.json").read_text())


def _examples(run_dir: Path) -> list[dict[str, Any]]:
    """One val question per question family (``example_questions``: chosen from the annotations alone, never from
    the model's answers), each with the model's top-3 answers, the human answers and the image's objects."""
    from tcl.data.builders import build_vqa_dataset, vqa_collator
    from tcl.inference.answering import AnswerPredictor
    from tcl.inference.runs import load_vqa_run

    run_config, model, tokenizer, vocabulary = load_vqa_run(run_dir)
    model.eval()
    dataset = build_vqa_dataset(run_config, train=False)
    row_of = {qid: row for row, qid in enumerate(dataset.table["question_id"])}
    annotations = Path(run_config.data.root) / "annotations"
    chosen = [(family, qid) for family, qid in example_questions(annotations, run_config.data.vqa_eval)
              if qid in row_of]
    picks = [dataset[row_of[qid]] for _, qid in chosen]
    batch = vqa_collator(run_config, tokenizer, train=False)(picks)
    predictor = AnswerPredictor.from_config(run_config, model, tokenizer, vocabulary)
    tops = predictor.top_answers(batch["image"], batch["input_ids"], batch["attention_mask"], top_k=3,
                                 image_index=batch["image_index"])
    objects = image_objects(annotations / f"instances_{run_config.data.vqa_eval}.json")
    image_of = {qid: image for qid, image in zip(dataset.table["question_id"], dataset.table["image_id"])}
    return [{"family": family, "question_id": sample["question_id"], "image_id": image_of[qid],
             "question": sample["question"], "objects": objects.get(image_of[qid], []),
             "human_answers": sample["human_answers"], "top3": top}
            for (family, qid), sample, top in zip(chosen, picks, tops)]


def example_questions(annotations: Path, split: str, spacing: int = 97) -> list[tuple[str, int]]:
    """(family, question id) of one fixed question per family: the k-th family's first question on or after the
    (k x ``spacing``)-th image (wrapping around), so that the examples show different images. Empty when the
    annotations name no families (real VQA v2)."""
    from tcl.data.shapes import FAMILIES

    records = json.loads((annotations / f"v2_mscoco_{split}_annotations.json").read_text())["annotations"]
    image_order = {image: k for k, image in enumerate(dict.fromkeys(r["image_id"] for r in records))}
    picks = []
    for k, family in enumerate(FAMILIES):
        start = k * spacing
        candidates = [r for r in records if r.get("question_family") == family]
        if candidates:
            first = min(candidates, key=lambda r: ((image_order[r["image_id"]] - start) % len(image_order),
                                                   r["question_id"]))
            picks.append((family, int(first["question_id"])))
    return picks


def image_objects(instances: Path) -> dict[int, list[str]]:
    """Each image's objects in words ("large green square, top left"), from its COCO instances file (empty when
    there is none)."""
    from tcl.data.shapes import location_words

    if not instances.is_file():
        return {}
    data = json.loads(instances.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    sizes = {image["id"]: (image["width"], image["height"]) for image in data["images"]}
    objects: dict[int, list[str]] = {}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        where = location_words(x + w / 2, y + h / 2, *sizes[a["image_id"]])[len("the "):]
        words = " ".join([*a.get("attributes", []), names[a["category_id"]]])
        objects.setdefault(a["image_id"], []).append(f"{words}, {where}")
    return objects


def format_results(results: dict[str, Any]) -> str:
    lines = ["", "demo results (official VQA accuracy on the generated val2014 split, %)",
             f"  {'model':<38} {'overall':>8}  " + "  ".join(f"{t:>8}" for t in results["per_answer_type"]),
             _row("TCL pretraining + fine-tuning", results["vqa_accuracy"], results["per_answer_type"]),
             _row("fine-tuning from scratch (same budget)", results["scratch_accuracy"],
                  results["scratch_per_answer_type"]),
             *_family_rows(results),
             f"  {'blind: best question-only prior':<38} {results['blind_accuracy']:8.2f}",
             f"  {'blind: fine-tuned model, constant image':<38} {results['model_blind_accuracy']:8.2f}",
             f"  hit rate (prediction among the 10 answers): {results['hit_rate']:.2f} %",
             f"  total time: {results['minutes']:.1f} min"]
    if "retrieval_i2t_r1" in results:
        lines += ["", "pretraining alone (zero-shot, held-out val images against their full-listing captions, %)",
                  f"  retrieval R@1 image->text {results['retrieval_i2t_r1']:.1f}, text->image "
                  f"{results['retrieval_t2i_r1']:.1f} (R@5 {results['retrieval_i2t_r5']:.1f} / "
                  f"{results['retrieval_t2i_r5']:.1f}; chance R@1 {100 / results['retrieval_images']:.1f})",
                  f"  ITM accuracy on true vs random captions {results['itm_accuracy']:.1f} (chance 50)"]
        if "region_category_accuracy" in results:
            parts = "".join(f", {name} {results[f'region_{name}_accuracy']:.1f}" for name in ("attribute", "position")
                            if results.get(f"region_{name}_accuracy") is not None)
            lines.append(f"  region head on held-out objects: category {results['region_category_accuracy']:.1f}"
                         + parts)
    lines += ["", "examples (one per question family, chosen before the model answered):"]
    for example in results["examples"]:
        answers = ", ".join(f"{a['answer']} ({a['score']:.2f})" for a in example["top3"])
        humans = Counter(example["human_answers"]).most_common(1)[0][0] if example["human_answers"] else "?"
        lines += [f"  [{example['family']}] image: {'; '.join(example['objects'])}",
                  f"    {example['question']}? -> {answers}; humans: {humans}"]
    if "model_dir" in results:
        lines += ["", f"the fine-tuned model is saved in {results['model_dir']}; ask it yourself:",
                  f"  tcl predict --model {results['model_dir']} --image IMAGE --question \"what color is the circle?\""]
    return "\n".join(lines)


def _family_rows(results: dict[str, Any]) -> list[str]:
    """Per question family, pretrained + fine-tuned against from scratch (when the annotations name families)."""
    families = results.get("per_family") or {}
    if not families:
        return []
    scratch = results.get("scratch_per_family", {})
    return ["  per question family (pretrained / from scratch): " + ", ".join(
        f"{family} {value:.1f} / {scratch.get(family, float('nan')):.1f}" for family, value in families.items())]


def _row(name: str, overall: float, per_type: dict[str, float]) -> str:
    return f"  {name:<38} {overall:8.2f}  " + "  ".join(f"{value:8.2f}" for value in per_type.values())


def _plot(results: dict[str, Any], path: Path) -> None:
    """Per answer type and overall: the two fine-tuned models as labelled bars, and both blind baselines (the
    question-only prior; the fine-tuned model fed a constant image) as markers across each group, so a type where a
    model does no better than blind shows at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = list(results["per_answer_type"])
    labels = types + ["overall"]

    def values(per_type_key: str, overall_key: str) -> list[float]:
        return [results[per_type_key].get(t, 0.0) for t in types] + [results[overall_key]]

    bars = {"pretrained + fine-tuned": values("per_answer_type", "vqa_accuracy"),
            "from scratch": values("scratch_per_answer_type", "scratch_accuracy")}
    blinds = {"blind: question-only prior": (values("blind_per_answer_type", "blind_accuracy"), "dimgray", "--"),
              "blind: model fed a constant image": (values("model_blind_per_answer_type", "model_blind_accuracy"),
                                                    "black", ":")}
    figure, axis = plt.subplots(figsize=(8, 4))
    width = 0.38
    for offset, (name, heights) in enumerate(bars.items()):
        drawn = axis.bar([i + (offset - 0.5) * width for i in range(len(labels))], heights, width, label=name)
        axis.bar_label(drawn, fmt="%.1f", fontsize=7, padding=2)
    for name, (heights, colour, style) in blinds.items():
        for i, height in enumerate(heights):
            axis.hlines(height, i - width * 1.1, i + width * 1.1, colors=colour, linestyles=style,
                        label=name if i == 0 else None)
            axis.annotate(f"{height:.1f}", (i + width * 1.1, height), fontsize=6, color=colour, va="center")
    axis.set_xticks(range(len(labels)), labels)
    axis.set_ylabel("official VQA accuracy (%)")
    axis.set_ylim(0, 105)
    axis.legend(fontsize=7, loc="upper left", ncols=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)