"""``tcl make-data``: generates the embedded dataset, builds its tokenizer, and summarises it."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tcl.atomic import write_json_atomic
from tcl.data.shapes import FAMILY_OF_QUESTION_TYPE, MAX_OBJECTS, SPLITS, generate_split, write_split
from tcl.text_cleaning import pre_caption, pre_question
from tcl.data.tokenizer import build_wordpiece_tokenizer

logger = logging.getLogger(__name__)

SUMMARY_FILE = "shapes_summary.json"


def dataset_exists(root: str | Path) -> bool:
    """True when ``root`` holds a complete generated dataset (its summary is written last) of today's layout: one
    generated before the instances files (2026-12-04) is regenerated, its other files byte-identical."""
    root = Path(root)
    return (root / SUMMARY_FILE).is_file() and all((root / "annotations" / f"instances_{split}.json").is_file()
                                                   for split in SPLITS)


def generator_settings(train_images: int, val_images: int, image_size: int, questions_per_image: int, seed: int,
                       max_objects: int, extra_relation_questions: int) -> dict[str, Any]:
    """The settings a generated dataset records in its summary (``make_shapes_dataset``'s arguments; the options
    that were added later only when set, so that an older world's summary stays byte-identical)."""
    settings = {"train_images": train_images, "val_images": val_images, "image_size": image_size,
                "questions_per_image": questions_per_image, "seed": seed, "max_objects": max_objects}
    if extra_relation_questions:
        settings["extra_relation_questions"] = extra_relation_questions
    return settings


def generated_with(root: str | Path) -> dict[str, Any] | None:
    """The settings a generated dataset at ``root`` was made with (None: none recorded)."""
    from tcl.json_io import load_json

    path = Path(root) / SUMMARY_FILE
    return load_json(path).get("generator") if path.is_file() else None


def make_shapes_dataset(out: str | Path, train_images: int = 2000, val_images: int = 500, image_size: int = 64,
                        questions_per_image: int = 6, seed: int = 0, show_progress: bool = True,
                        max_objects: int = MAX_OBJECTS, extra_relation_questions: int = 0) -> dict[str, Any]:
    """Writes the dataset in the official COCO/VQA layout under ``out`` and returns its summary.

    The same arguments always produce byte-identical files. ``max_objects`` (1-4) bounds the objects per image:
    fewer make an easier world (a single object leaves no relation questions). ``extra_relation_questions`` adds as
    many relation questions to each training image with two objects or more (the validation split keeps every
    family's share equal).
    """
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"max_objects must be between 1 and {MAX_OBJECTS}, got {max_objects}")
    out = Path(out)
    sizes = {"train2014": train_images, "val2014": val_images}
    splits = {}
    for split in SPLITS:
        progress = (lambda it, s=split: tqdm(it, desc=f"render {s}", unit="img")) if show_progress else iter
        splits[split] = generate_split(split, sizes[split], image_size, questions_per_image, seed,
                                       out / "images" / split, progress, max_objects,
                                       extra_relation_questions if split == "train2014" else 0)
        write_split(out, split, splits[split])
    corpus = [pre_caption(c["caption"]) for d in splits.values() for c in d.captions]
    corpus += [pre_question(q["question"]) for d in splits.values() for q in d.questions]
    corpus += [a["answer"] for d in splits.values() for ann in d.annotations for a in ann["answers"]]
    build_wordpiece_tokenizer(corpus, out / "tokenizer")
    summary = summarize(out)
    summary["generator"] = generator_settings(train_images, val_images, image_size, questions_per_image, seed,
                                              max_objects, extra_relation_questions)
    # The folder is left out of the file so that the same arguments give identical files wherever they are written.
    write_json_atomic({k: v for k, v in summary.items() if k != "root"}, out / SUMMARY_FILE, indent=2)
    return summary


def summarize(root: str | Path) -> dict[str, Any]:
    """Counts per split and question family, answer balance, and the blind (question-only) baseline on val."""
    from tcl.evaluation.answer_prior import blind_scores

    root = Path(root)
    files = {}
    summary: dict[str, Any] = {"root": str(root), "splits": {}}
    for split in SPLITS:
        captions = _load(root / "annotations" / f"captions_{split}.json")
        questions = _load(root / "annotations" / f"v2_OpenEnded_mscoco_{split}_questions.json")["questions"]
        annotations = _load(root / "annotations" / f"v2_mscoco_{split}_annotations.json")["annotations"]
        files[split] = (questions, annotations)
        families = Counter(FAMILY_OF_QUESTION_TYPE.get(a["question_type"], a["question_type"]) for a in annotations)
        answers: dict[str, Counter] = {}
        for ann in annotations:
            family = FAMILY_OF_QUESTION_TYPE.get(ann["question_type"], ann["question_type"])
            answers.setdefault(family, Counter())[ann["multiple_choice_answer"]] += 1
        summary["splits"][split] = {
            "images": len(captions["images"]), "captions": len(captions["annotations"]),
            "questions": len(questions), "questions_per_family": dict(sorted(families.items())),
            "answers_per_family": {f: dict(c.most_common()) for f, c in sorted(answers.items())},
        }
    blind = blind_scores(*files["train2014"], *files["val2014"])
    summary["blind_val_accuracy"] = blind["overall"]
    summary["blind_val_per_answer_type"] = blind["per_answer_type"]
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A human-readable table of ``summary``."""
    lines = [f"dataset: {summary['root']}"]
    for split, info in summary["splits"].items():
        lines.append(f"  {split}: {info['images']} images, {info['captions']} captions, {info['questions']} questions")
        for family, count in info["questions_per_family"].items():
            answers = info["answers_per_family"].get(family, {})
            shown = ", ".join(f"{a}:{n}" for a, n in list(answers.items())[:8])
            lines.append(f"    {family:<10} {count:>6}  answers {shown}")
    lines.append(f"  blind baseline (best question-only prior) on val2014: "
                 f"{summary['blind_val_accuracy']:.2f} % official VQA accuracy")
    return "\n".join(lines)


def _load(path: Path) -> Any:
    from tcl.json_io import load_json

    return load_json(path)
