"""Official VQA accuracy of a run's val results on the embedded data, per question kind, split by whether the image
holds one object or several — a diagnostic: with one object, "what color is the circle?" needs no shape at all, while
"what shape is the red object?" needs nothing else.

    python research/probes/breakdown_vqa_results.py --run runs/demo/vqa [--split val2014] [--json FILE]

Families and object counts are the generator's own (``question_family`` of each annotation, ``num_objects`` of each
image: tcl.data.shapes). Also prints, for the shape questions, how often each true shape gets each predicted answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from tcl.config import load_config
from tcl.evaluation import vqa_accuracy


def breakdown(root: Path, split: str, results: list[dict]) -> dict:
    annotations_dir = root / "annotations"
    images = json.loads((annotations_dir / f"captions_{split}.json").read_text())["images"]
    if images and "num_objects" not in images[0]:
        raise SystemExit(f"{root}: generated before the annotations carried question_family and num_objects "
                         f"(2026-12-02); regenerate it: tcl make-data --out {root} --force")
    single = {image["id"] for image in images if image["num_objects"] == 1}
    annotations = {a["question_id"]: a for a in
                   json.loads((annotations_dir / f"v2_mscoco_{split}_annotations.json").read_text())["annotations"]}
    scores: dict[str, list[float]] = defaultdict(list)
    confusion: Counter = Counter()
    for result in results:
        annotation = annotations[result["question_id"]]
        kind = annotation["question_family"]
        objects = "one object" if annotation["image_id"] in single else "several objects"
        score = vqa_accuracy(result["answer"], [a["answer"] for a in annotation["answers"]])
        scores[f"{kind} | {objects}"].append(score)
        scores[f"{kind} | all"].append(score)
        if kind == "shape":
            confusion[f"{annotation['multiple_choice_answer']} -> {result['answer']}"] += 1
    return {"accuracy": {key: {"questions": len(values), "accuracy": round(100 * sum(values) / len(values), 2)}
                         for key, values in sorted(scores.items())},
            "shape_confusion": dict(confusion.most_common())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a fine-tuning run folder with vqa_results_<split>.json")
    parser.add_argument("--split", default="val2014")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    run = Path(args.run)
    root = Path(load_config(run / "config.yaml").data.root)
    table = breakdown(root, args.split, json.loads((run / f"vqa_results_{args.split}.json").read_text()))
    print("| question kind | images | questions | VQA accuracy |\n|---|---|---|---|")
    for key, row in table["accuracy"].items():
        kind, objects = key.split(" | ")
        print(f"| {kind} | {objects} | {row['questions']} | {row['accuracy']:.2f} |")
    print("shape questions, true -> predicted:", ", ".join(f"{k} ({v})" for k, v in table["shape_confusion"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"run": str(run), "split": args.split, **table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
