"""Does a fine-tuned VQA model know which object a relation question names first? Each val relation question ("is
the red circle left of the blue square?") is asked as it is and with its two objects swapped ("is the blue square
left of the red circle?", the other answer): a model that reads only which objects are named, not their roles,
gives both the same answer. Also: the accuracy where the two objects lie in different halves along the question's
axis (then knowing each object's half, which position questions teach, would be enough).

    python research/probes/probe_relation_roles.py --model RUN_OR_MODEL [--data data/shapes] [--json FILE]

``--model``: a fine-tuning run folder or saved model folder (``tcl.load_vqa``).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import tcl

RELATION = re.compile(r"is the (.+) (left of|right of|above|below) the (.+)\?")
OTHER = {"yes": "no", "no": "yes"}


def swapped(question: str) -> str:
    """The question with its two objects' places swapped (its answer is the other one)."""
    subject, words, reference = RELATION.match(question).groups()
    return f"is the {reference} {words} the {subject}?"


def centres(root: Path) -> dict[int, list[tuple[set[str], float, float]]]:
    """Per val image, each object's words (shape, size, colour) and its box centre."""
    instances = json.loads((root / "annotations/instances_val2014.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    found = defaultdict(list)
    for a in instances["annotations"]:
        x, y, w, h = a["bbox"]
        found[a["image_id"]].append(({*a["attributes"], names[a["category_id"]]}, x + w / 2, y + h / 2))
    return found


def halves_differ(objects, question: str, size: float) -> bool:
    subject, words, reference = RELATION.match(question).groups()
    axis = 1 if words.endswith("of") else 2
    picked = [next(o for o in objects if set(name.replace(" object", "").split()) <= o[0])
              for name in (subject, reference)]
    return (picked[0][axis] < size / 2) != (picked[1][axis] < size / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a fine-tuning run folder or saved model folder")
    parser.add_argument("--data", default="data/shapes", help="the generated data (default data/shapes)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    root = Path(args.data)
    questions = json.loads((root / "annotations/v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    truth = {a["question_id"]: a for a in
             json.loads((root / "annotations/v2_mscoco_val2014_annotations.json").read_text())["annotations"]}
    rows = [q for q in questions if truth[q["question_id"]].get("question_family") == "relation"]
    images = {i["id"]: i for i in json.loads((root / "annotations/captions_val2014.json").read_text())["images"]}
    paths = [root / "images/val2014" / images[q["image_id"]]["file_name"] for q in rows]
    vqa = tcl.load_vqa(args.model)
    asked = [r[0]["answer"] for r in vqa(paths, [q["question"] for q in rows], top_k=1)]
    turned = [r[0]["answer"] for r in vqa(paths, [swapped(q["question"]) for q in rows], top_k=1)]
    objects = centres(root)
    right = [answer == truth[q["question_id"]]["multiple_choice_answer"] for q, answer in zip(rows, asked)]
    apart = [halves_differ(objects[q["image_id"]], q["question"], images[q["image_id"]]["width"]) for q in rows]
    results = {
        "questions": len(rows),
        "same_answer_when_swapped": 100.0 * sum(a == b for a, b in zip(asked, turned)) / len(rows),
        "accuracy": 100.0 * sum(right) / len(rows),  # exact matches of the humans' most common answer
        "accuracy_swapped": 100.0 * sum(b == OTHER.get(truth[q["question_id"]]["multiple_choice_answer"])
                                        for q, b in zip(rows, turned)) / len(rows),
        "accuracy_halves_differ": 100.0 * sum(r for r, a in zip(right, apart) if a) / max(sum(apart), 1),
    }
    print(f"{len(rows)} relation questions: the same answer with the objects swapped "
          f"{results['same_answer_when_swapped']:.1f} % (a role-blind model: 100 %); answers right "
          f"{results['accuracy']:.1f} % as asked, {results['accuracy_swapped']:.1f} % swapped, "
          f"{results['accuracy_halves_differ']:.1f} % where the objects lie in different halves")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
