"""Is the demo's transfer gain limited by its budget or by its recipe? The demo's pretraining and fine-tuning
(``configs/pretrain_tiny.yaml``, ``configs/vqa_tiny.yaml``) at several pretraining and fine-tuning lengths, each
fine-tuning run from scratch and from every pretraining run, with VQA accuracy per question family.

    python research/probes/probe_budget.py [overrides ...] --out runs/budget --pretrain-epochs 3 12 \
        --finetune-epochs 3 12 [--seeds 0] [--deadline-minutes 8]      # overrides first

On 2 CPU cores one demo-sized pretraining (3 epochs) takes 6-8 minutes; the lengths beyond it are meant for a machine
with a GPU (``data.num_workers=8`` there). Runs go in priority order: the demo's own budget first (scratch, then from
its pretraining), then longer pretraining at the demo's fine-tuning budget, then longer fine-tuning. Once
``--deadline-minutes`` have passed no new run starts. ``<out>/results.json`` is rewritten after every run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from breakdown_vqa_results import breakdown  # noqa: E402


def plan(pretrain_epochs: list[int], finetune_epochs: list[int], seeds: list[int]) -> list[tuple]:
    """The runs in priority order: ("pretrain", E) or ("finetune", E or None for scratch, F, seed)."""
    first, *longer = finetune_epochs
    jobs: list[tuple] = [("finetune", None, first, seed) for seed in seeds]
    for epochs in pretrain_epochs:
        jobs += [("pretrain", epochs)] + [("finetune", epochs, first, seed) for seed in seeds]
    for finetune in longer:  # the longest pretraining first: it is the one most likely to differ
        jobs += [("finetune", init, finetune, seed) for init in (None, *pretrain_epochs[::-1]) for seed in seeds]
    return jobs


def pretrain(out: Path, epochs: int, overrides: list[str]) -> dict:
    from tcl.demo import read_retrieval, run_stage

    run = out / f"pretrain-{epochs}ep"
    run_stage(f"pretrain {epochs} epochs",
              ["pretrain", "--config", str(REPO / "configs/pretrain_tiny.yaml"), "--overwrite", f"train.output_dir={run}",
               f"train.epochs={epochs}", *overrides])
    retrieval = read_retrieval(run, [f"train.epochs={epochs}", *overrides])
    return {"run": str(run), **{key: value for key, value in retrieval.items() if key != "retrieval_file"}}


def finetune(out: Path, init: int | None, epochs: int, seed: int, overrides: list[str]) -> dict:
    from tcl.config import load_config
    from tcl.demo import read_scores, run_stage
    from tcl.evaluation.results import vqa_output_tag

    arm = "scratch" if init is None else f"pretrain-{init}ep"
    run = out / f"vqa-{arm}-ft{epochs}ep-seed{seed}"
    run_stage(f"fine-tune {epochs} epochs from {arm}, seed {seed}",
              ["finetune-vqa", "--config", str(REPO / "configs/vqa_tiny.yaml"), "--overwrite", f"train.output_dir={run}",
               f"vqa.init={'null' if init is None else out / arm}", f"train.epochs={epochs}",
               f"train.seed={seed}", *overrides])
    scores = read_scores(run)
    config = load_config(run / "config.yaml")
    answers = run / f"vqa_results_{vqa_output_tag(config.data.vqa_eval, False, config.eval.max_questions)}.json"
    families = breakdown(Path(config.data.root), config.data.vqa_eval, json.loads(answers.read_text()))["accuracy"]
    return {"run": str(run), "vqa_accuracy": scores["overall"],
            "families": {key.split(" | ")[0]: row["accuracy"] for key, row in families.items()
                         if key.endswith("| all")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/budget")
    parser.add_argument("--pretrain-epochs", nargs="+", type=int, default=[3, 12])
    parser.add_argument("--finetune-epochs", nargs="+", type=int, default=[3, 12])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--deadline-minutes", type=float, default=float("inf"))
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides for every run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, results = time.perf_counter(), []
    for job in plan(args.pretrain_epochs, args.finetune_epochs, args.seeds):
        elapsed = (time.perf_counter() - start) / 60
        name = f"pretrain-{job[1]}ep" if job[0] == "pretrain" else \
            f"ft{job[2]}ep-from-{'scratch' if job[1] is None else f'pretrain-{job[1]}ep'}-seed{job[3]}"
        needs = job[1] if job[0] == "finetune" else None
        if elapsed > args.deadline_minutes or (needs is not None and not (out / f"pretrain-{needs}ep").is_dir()):
            results.append({"job": name, "skipped": f"after {elapsed:.1f} min" if elapsed > args.deadline_minutes
                            else "its pretraining did not run"})
            continue
        began = time.perf_counter()
        try:
            row = pretrain(out, job[1], args.overrides) if job[0] == "pretrain" else \
                finetune(out, job[1], job[2], job[3], args.overrides)
        except Exception as error:  # noqa: BLE001 - one failed run must not lose the others' numbers
            row = {"error": f"{type(error).__name__}: {error}"}
        results.append({"job": name, "minutes": round((time.perf_counter() - began) / 60, 2), **row})
        print(json.dumps(results[-1]), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
