"""Does pretraining help VQA? Fine-tuning from a pretraining run against fine-tuning from scratch, at several label
budgets and seeds, with the same fine-tuning settings (``configs/vqa_tiny.yaml``) for both arms (which keeps a
pretrained image encoder fixed and trains one from scratch: ``vqa.freeze_pretrained_vision``).

    python research/experiment_transfer.py --pretrained runs/demo/pretrain      # 1,000 / 3,000 / all questions x 2 seeds
    python research/experiment_transfer.py data.root=DIR --pretrained DIR --budgets 1000 --seeds 0   # overrides first

Each budget keeps the first N training questions of a fixed shuffle (``vqa.max_train_questions``; ``all`` = every
question) and fine-tunes for the config's epochs. Every run's numbers go to ``<out>/results.json`` as they arrive (an
interrupted study continues where it stopped), then a table (mean ± std over seeds) and a figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS = ("pretrained", "scratch")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", required=True, help="a pretraining run folder (e.g. runs/demo/pretrain)")
    parser.add_argument("--out", default="runs/transfer", help="output folder (default runs/transfer)")
    parser.add_argument("--budgets", nargs="+", default=["1000", "3000", "all"],
                        help="training questions per run: numbers or 'all'")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides for every run (e.g. data.root=..)")
    args = parser.parse_args(argv)
    for budget in args.budgets:
        if budget != "all" and not (budget.isdigit() and int(budget) > 0):
            parser.error(f"--budgets: {budget!r} is neither a positive number nor 'all'")
    return args


def run_one(args: argparse.Namespace, budget: str, seed: int, arm: str, out: Path) -> dict:
    from tcl.demo import read_scores, run_stage

    run = out / f"{budget}-seed{seed}-{arm}"
    init = str(Path(args.pretrained)) if arm == "pretrained" else "null"
    limit = "null" if budget == "all" else budget
    start = time.perf_counter()
    run_stage(f"{arm}, {budget} questions, seed {seed}",
              ["finetune-vqa", "--config", str(REPO / "configs/vqa_tiny.yaml"), "--overwrite", f"train.output_dir={run}",
               f"vqa.init={init}", f"vqa.max_train_questions={limit}", f"train.seed={seed}", *args.overrides])
    scores = read_scores(run)
    return {"budget": budget, "seed": seed, "arm": arm, "vqa_accuracy": scores["overall"],
            "hit_rate": scores["hit_rate"], "per_answer_type": scores["per_answer_type"],
            "minutes": round((time.perf_counter() - start) / 60, 2)}


def summarise(runs: list[dict], budgets: list[str]) -> list[dict]:
    rows = []
    for budget in budgets:
        row = {"budget": budget}
        for arm in ARMS:
            values = [r["vqa_accuracy"] for r in runs if r["budget"] == budget and r["arm"] == arm]
            if values:
                row[arm] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0,
                            len(values))
        if all(arm in row for arm in ARMS):
            row["gain"] = row["pretrained"][0] - row["scratch"][0]
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    def cell(row, arm):
        return f"{row[arm][0]:.2f} ± {row[arm][1]:.2f} ({row[arm][2]})" if arm in row else "–"

    lines = ["| training questions | pretrained + fine-tuned (seeds) | from scratch (seeds) | gain (points) |",
             "|---|---|---|---|"]
    for row in rows:
        gain = f"{row['gain']:+.2f}" if "gain" in row else "–"
        lines.append(f"| {row['budget']} | {cell(row, 'pretrained')} | {cell(row, 'scratch')} | {gain} |")
    return "\n".join(lines)


def plot(rows: list[dict], runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.8))
    positions = range(len(rows))
    for offset, arm in ((-0.2, "pretrained"), (0.2, "scratch")):
        present = [(i, row) for i, row in zip(positions, rows) if arm in row]
        axis.bar([i + offset for i, _ in present], [row[arm][0] for _, row in present], width=0.4,
                 yerr=[row[arm][1] for _, row in present], capsize=4, label=arm)
        for i, row in present:
            points = [r["vqa_accuracy"] for r in runs if r["budget"] == row["budget"] and r["arm"] == arm]
            axis.scatter([i + offset] * len(points), points, color="black", s=10, zorder=3)
    axis.set_xticks(list(positions), [row["budget"] for row in rows])
    axis.set_xlabel("training questions")
    axis.set_ylabel("VQA accuracy on the val split (%)")
    axis.set_ylim(bottom=max(0, min(r["vqa_accuracy"] for r in runs) - 10))
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    runs = json.loads(results_path.read_text())["runs"] if results_path.is_file() else []
    done = {(r["budget"], r["seed"], r["arm"]) for r in runs}
    for budget in args.budgets:
        for seed in args.seeds:
            for arm in ARMS:
                if (budget, seed, arm) in done:
                    continue
                runs.append(run_one(args, budget, seed, arm, out))
                results_path.write_text(json.dumps({"pretrained": args.pretrained, "runs": runs}, indent=2))
                print(json.dumps(runs[-1]), flush=True)
    chosen = [r for r in runs if r["budget"] in args.budgets and r["seed"] in args.seeds]
    rows = summarise(chosen, args.budgets)
    table = markdown(rows)
    (out / "table.md").write_text(table + "\n")
    plot(rows, chosen, out / "transfer.png")
    print(table)
    print(f"results: {results_path}, figure: {out / 'transfer.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
