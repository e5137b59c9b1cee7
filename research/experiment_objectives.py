"""The contrastive-objective study on the embedded data: does the objective change what pretraining gives VQA?

For each arm (InfoNCE, L_Neg, L_Pos, L_Pos without its e_self term, InfoNCE with UOTA weighting of the IMC image
positives) and each seed, pretrains the tiny model, fine-tunes it on VQA and evaluates it on the generated val split,
with the same budget for every arm. Writes every run's numbers to ``results.json`` as they arrive (an interrupted
study continues where it stopped), then a table (official VQA accuracy and hit rate, mean ± std over seeds; the final
alignment and uniformity of the pretraining features) and a figure.

    python research/experiment_objectives.py                          # 5 arms x 3 seeds, the demo's budget
    python research/experiment_objectives.py --protocol thesis        # frozen vision, capped questions (thesis §4.3)
    python research/experiment_objectives.py --pretrain-steps 150 --finetune-epochs 1 --seeds 0   # a quick look

The thesis protocol fine-tunes with the image encoder frozen on at most ``--max-train-questions`` questions and
evaluates on at most ``--max-eval-questions`` (the thesis: 100,000 and 50,000 VQA v2 questions; here the defaults are
the same fractions of the generated splits' scale: 5,000 and 2,000). Pretraining is the same under both protocols, so each
arm and seed pretrains once (``<out>/pretraining/``) and the second protocol only fine-tunes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS = {
    "infonce": ["loss.objective=infonce"],
    "debiased_neg": ["loss.objective=debiased_neg", "loss.tau_plus=0.1"],
    "debiased_pos": ["loss.objective=debiased_pos", "loss.tau_plus=0.1"],
    "debiased_pos_no_self": ["loss.objective=debiased_pos", "loss.tau_plus=0.1", "loss.include_self=false"],
    "infonce_uota": ["loss.objective=infonce", "loss.uota=true"],
}
# Written into a pretraining folder once it is complete: both protocols then fine-tune from it without pretraining again.
PRETRAINING_DONE = "STUDY_PRETRAINING_DONE"
DIAGNOSTICS = ("diag/alignment", "diag/uniformity_image", "diag/uniformity_text")
RETRIEVAL = ("i2t_r1", "t2i_r1", "itc_i2t_r1", "itc_t2i_r1", "itm_accuracy", "mlm_word_accuracy", "mlm_colour_accuracy",
             "mlm_shape_accuracy", "swap_itm_colour", "swap_itm_shape", "swap_itm_size")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/objectives", help="output folder (default runs/objectives)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--protocol", choices=("default", "thesis"), default="default")
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help="cap on pretraining steps (default: the tiny config's epochs)")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="VQA epochs (default: the tiny config's 3)")
    parser.add_argument("--max-train-questions", type=int, default=5000, help="thesis protocol: training questions")
    parser.add_argument("--max-eval-questions", type=int, default=2000, help="thesis protocol: evaluation questions")
    parser.add_argument("--no-finetune", action="store_true",
                        help="pretrain only: record the zero-shot retrieval, ITM and geometry of each arm, no VQA")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides for every stage (e.g. data.root=..)")
    return parser.parse_args(argv)


def pretraining_dir(args: argparse.Namespace, arm: str, seed: int) -> Path:
    """Where one arm and seed pretrain: shared by both protocols (the pretraining is the same), named by budget."""
    budget = f"steps{args.pretrain_steps}" if args.pretrain_steps else "epochs"
    return Path(args.out) / "pretraining" / f"{arm}-seed{seed}-{budget}"


def stage_arguments(args: argparse.Namespace, arm: str, seed: int, run: Path) -> tuple[list[str], list[str]]:
    """The pretraining and fine-tuning argument lists of one run."""
    common = [f"train.seed={seed}", *args.overrides]
    pretrained = pretraining_dir(args, arm, seed)
    # A stage that runs again (an interrupted study) redoes its run: --overwrite.
    pretrain = ["--config", str(REPO / "configs/pretrain_tiny.yaml"), "--overwrite", f"train.output_dir={pretrained}",
                *ARMS[arm], *common]
    if args.pretrain_steps:
        pretrain.append(f"train.max_steps={args.pretrain_steps}")
    finetune = ["--config", str(REPO / "configs/vqa_tiny.yaml"), "--overwrite", f"train.output_dir={run / 'vqa'}",
                f"vqa.init={pretrained}", *common]
    if args.finetune_epochs:
        finetune.append(f"train.epochs={args.finetune_epochs}")
    if args.protocol == "thesis":
        finetune += ["vqa.freeze_vision=true", f"vqa.max_train_questions={args.max_train_questions}",
                     f"eval.max_questions={args.max_eval_questions}"]
    return pretrain, finetune


def final_diagnostics(pretrain_dir: Path) -> dict[str, float]:
    """Alignment and uniformity of the last logged pretraining step."""
    last = {}
    for line in (pretrain_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if all(key in record for key in DIAGNOSTICS):
            last = record
    return {key.split("/")[1]: round(last[key], 4) for key in DIAGNOSTICS} if last else {}


def final_retrieval(pretrain_dir: Path) -> dict[str, float]:
    """The pretraining run's final zero-shot retrieval (R@1 both ways, ITM accuracy), when it evaluated one."""
    files = sorted(pretrain_dir.glob("retrieval_*.json"))
    if not files:
        return {}
    results = json.loads(files[0].read_text())
    return {key: results[key] for key in RETRIEVAL if key in results}


def run_one(args: argparse.Namespace, arm: str, seed: int, out: Path) -> dict:
    from tcl.demo import read_scores, run_stage

    run = out / arm / f"seed{seed}"
    pretrain_argv, finetune_argv = stage_arguments(args, arm, seed, run)
    pretrained, start = pretraining_dir(args, arm, seed), time.perf_counter()
    done_marker = pretrained / PRETRAINING_DONE
    if done_marker.is_file():
        print(f"{arm} seed {seed}: reusing the pretraining in {pretrained}")
    else:
        run_stage(f"{arm} seed {seed}: pretrain", ["pretrain", *pretrain_argv])
        done_marker.write_text("pretraining finished\n")
    pretraining = {**final_diagnostics(pretrained), **final_retrieval(pretrained)}
    if args.no_finetune:
        return {"arm": arm, "seed": seed, **pretraining, "minutes": round((time.perf_counter() - start) / 60, 2)}
    run_stage(f"{arm} seed {seed}: fine-tune", ["finetune-vqa", *finetune_argv])
    scores = read_scores(run / "vqa")
    return {"arm": arm, "seed": seed, "vqa_accuracy": scores["overall"], "hit_rate": scores["hit_rate"],
            "per_answer_type": scores["per_answer_type"], **pretraining,
            "minutes": round((time.perf_counter() - start) / 60, 2)}


def summarise(runs: list[dict], arms: list[str]) -> list[dict]:
    rows = []
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        if not mine:
            continue
        row = {"arm": arm, "seeds": len(mine)}
        for key in ("vqa_accuracy", "hit_rate", "i2t_r1", "t2i_r1", "itc_i2t_r1", "itc_t2i_r1", "itm_accuracy",
                    "mlm_word_accuracy", "alignment", "uniformity_image", "uniformity_text"):
            values = [r[key] for r in mine if key in r]
            if values:
                row[key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        rows.append(row)
    return rows


def markdown(rows: list[dict], protocol: str) -> str:
    def cell(row, key):
        return f"{row[key][0]:.2f} ± {row[key][1]:.2f}" if key in row else "–"

    columns = {"vqa_accuracy": "VQA accuracy", "hit_rate": "hit rate", "i2t_r1": "i2t R@1", "t2i_r1": "t2i R@1",
               "itc_i2t_r1": "ITC i2t R@1", "itc_t2i_r1": "ITC t2i R@1", "itm_accuracy": "ITM accuracy",
               "mlm_word_accuracy": "MLM content words", "alignment": "alignment",
               "uniformity_image": "uniformity (image)", "uniformity_text": "uniformity (text)"}
    lines = [f"| arm ({protocol} protocol) | seeds | " + " | ".join(columns.values()) + " |",
             "|---|---|" + "---|" * len(columns)]
    for row in rows:
        lines.append(f"| {row['arm']} | {row['seeds']} | " + " | ".join(cell(row, key) for key in columns) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, scatter) = plt.subplots(1, 2, figsize=(12, 4.2))
    names = [row["arm"] for row in rows]
    shown = (("vqa_accuracy", "VQA accuracy"), ("hit_rate", "hit rate"))
    if not all("vqa_accuracy" in row for row in rows):  # a pretraining-only study
        shown = (("i2t_r1", "image→text R@1"), ("t2i_r1", "text→image R@1"))
    for offset, (key, label) in zip((-0.2, 0.2), shown):
        means = [row[key][0] for row in rows]
        stds = [row[key][1] for row in rows]
        bars.bar([i + offset for i in range(len(rows))], means, width=0.4, yerr=stds, capsize=4, label=label)
        for i, arm in enumerate(names):
            points = [r[key] for r in runs if r["arm"] == arm]
            bars.scatter([i + offset] * len(points), points, color="black", s=10, zorder=3)
    bars.set_xticks(range(len(rows)), names, rotation=20)
    bars.set_ylabel("% on the generated val split")
    bars.set_ylim(bottom=max(0, min(r[shown[0][0]] for r in runs) - 10))
    bars.legend()
    for arm in names:
        mine = [r for r in runs if r["arm"] == arm and "alignment" in r]
        scatter.scatter([r["uniformity_image"] for r in mine], [r["alignment"] for r in mine], label=arm)
    scatter.set_xlabel("uniformity of the image features (lower = more uniform)")
    scatter.set_ylabel("alignment of image-text pairs (lower = closer)")
    scatter.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out) / ("pretraining_only" if args.no_finetune else args.protocol)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    runs = json.loads(results_path.read_text())["runs"] if results_path.is_file() else []
    done = {(r["arm"], r["seed"]) for r in runs}
    for arm in args.arms:
        for seed in args.seeds:
            if (arm, seed) in done:
                print(f"{arm} seed {seed}: already in {results_path}")
                continue
            runs.append(run_one(args, arm, seed, out))
            results_path.write_text(json.dumps({"protocol": args.protocol, "runs": runs}, indent=2))
            print(json.dumps(runs[-1]), flush=True)
    chosen = [r for r in runs if r["arm"] in args.arms and r["seed"] in args.seeds]
    rows = summarise(chosen, args.arms)
    table = markdown(rows, args.protocol)
    (out / "table.md").write_text(table + "\n")
    plot(rows, chosen, out / "objectives.png")
    print(table)
    print(f"results: {results_path}, figure: {out / 'objectives.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
