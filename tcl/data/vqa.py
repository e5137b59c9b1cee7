"""VQA data: the official VQA v2 question/annotation files, ALBEF-style ``vqa_*.json`` lists, and test splits.

Every source becomes one Arrow table (memory-mapped, see ``tcl.data.index``) with the columns of ``VQA_FEATURES``.
Test splits (a questions file without annotations) have empty answer lists.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import datasets
import torch

from tcl.data.bad_samples import merge_skipped
from tcl.data.base import SampleReading, TableDataset
from tcl.data.images import load_rgb_image
from tcl.data.index import cached_index, source_key
from tcl.json_io import load_json
from tcl.text_cleaning import pre_question
from tcl.data.tokenizer import TclTokenizer
from tcl.errors import BadSampleError, DataError

logger = logging.getLogger(__name__)

VQA_FEATURES = datasets.Features({
    "question_id": datasets.Value("int64"),
    "image_id": datasets.Value("int64"),
    "question": datasets.Value("string"),
    # Path relative to the image root of ``dataset`` (or absolute).
    "image": datasets.Value("string"),
    "dataset": datasets.Value("string"),
    "answers": datasets.Sequence(datasets.Value("string")),
    "question_type": datasets.Value("string"),
    "answer_type": datasets.Value("string"),
    "multiple_choice_answer": datasets.Value("string"),
})
# Folders in which the official files are looked for, relative to data.root.
SEARCH_FOLDERS = ("annotations", ".", "Questions", "Annotations", "vqa")
# TCL gives the single Visual Genome answer this weight (TCL.md Part B §4.2).
VG_ANSWER_WEIGHT = 0.5
OFFICIAL_ANSWERS = 10  # human answers per question in VQA v2


def official_paths(root: str | Path, split: str) -> tuple[Path, Path | None]:
    """Finds ``v2_OpenEnded_mscoco_<split>_questions.json`` and ``v2_mscoco_<split>_annotations.json``.

    Returns the questions path and the annotations path (None if absent: a test split).
    """
    root = Path(root)
    questions = _find(root, f"v2_OpenEnded_mscoco_{split}_questions.json")
    if questions is None:
        raise DataError(f"{root}: no v2_OpenEnded_mscoco_{split}_questions.json in {', '.join(SEARCH_FOLDERS)}. "
                        f"Check data.root and the split name (data.vqa_train / data.vqa_eval).")
    return questions, _find(root, f"v2_mscoco_{split}_annotations.json")


def _find(root: Path, name: str) -> Path | None:
    for folder in SEARCH_FOLDERS:
        if (root / folder / name).is_file():
            return root / folder / name
    return None


def official_vqa_table(root: str | Path, split: str, image_root: str | Path, on_bad_sample: str,
                       cache_dir: str | Path | None = None) -> tuple[datasets.Dataset, Counter]:
    """Indexes one official VQA v2 split (``train2014``, ``val2014``, ``test2015`` ...).

    Bad rows (a question whose image file is absent, i.e. an unknown image id; a question without annotation in an
    annotated split; an annotation without answers; a duplicated question id) are counted and left out, or raise,
    according to ``on_bad_sample``.
    """
    questions_path, annotations_path = official_paths(root, split)
    image_folder = Path(image_root) / split
    sources = [questions_path, image_folder] + ([annotations_path] if annotations_path else [])
    key = source_key(sources, extra=f"official|{split}|{on_bad_sample}")

    def rows(skipped: Counter) -> Iterator[dict]:
        return _official_rows(questions_path, annotations_path, split, image_folder, on_bad_sample, skipped)

    return cached_index(f"vqa_{split}", key, VQA_FEATURES, rows, cache_dir)


def _official_rows(questions_path: Path, annotations_path: Path | None, split: str, image_folder: Path,
                   on_bad_sample: str, skipped: Counter) -> Iterator[dict]:
    questions = _field(load_json(questions_path), "questions", questions_path)
    annotations = {}
    if annotations_path is not None:
        for ann in _field(load_json(annotations_path), "annotations", annotations_path):
            annotations[ann.get("question_id")] = ann
    present = {entry.name for entry in os.scandir(image_folder)} if image_folder.is_dir() else set()
    seen: set[int] = set()
    irregular: Counter = Counter()  # kept, but not as official VQA v2 has them: said once, below
    for position, question in enumerate(questions):
        problem = _official_problem(question, annotations, annotations_path is not None, seen, present, split)
        if problem:
            message, reason = problem
            _bad(f"{questions_path}: question {position} (id {question.get('question_id')}): {message}", reason,
                 on_bad_sample, skipped)
            continue
        seen.add(question["question_id"])
        ann = annotations.get(question["question_id"], {})
        answers = human_answers(ann)
        if annotations_path is not None and len(answers) != OFFICIAL_ANSWERS:
            irregular[f"{len(answers)} human answers"] += 1
        irregular["null answers left out"] += len(ann.get("answers", [])) - len(answers)
        yield {"question_id": question["question_id"], "image_id": question["image_id"],
               "question": question["question"], "image": f"{split}/{_coco_name(split, question['image_id'])}",
               "dataset": "vqa", "answers": answers,
               "question_type": ann.get("question_type", ""), "answer_type": ann.get("answer_type", ""),
               "multiple_choice_answer": ann.get("multiple_choice_answer", "")}
    irregular = +irregular
    if irregular:
        # The evaluation states the rule it scores them with (tcl.evaluation.vqa_metric.FEWER_ANSWERS_RULE).
        logger.warning("%s: questions unlike official VQA v2 (ten answers each): %s. They are kept; the VQA accuracy "
                       "scores them by the official formula over the answers they have.", annotations_path,
                       ", ".join(f"{count} with {what}" if "answers" in what and "null" not in what
                                 else f"{count} {what}" for what, count in sorted(irregular.items())))


def human_answers(annotation: dict) -> list[str]:
    """The annotation's human answers as strings; entries without an answer (null or missing) are left out."""
    return [str(a["answer"]) for a in annotation.get("answers", [])
            if isinstance(a, dict) and a.get("answer") is not None]


def _official_problem(question: dict, annotations: dict, annotated: bool, seen: set[int], present: set[str],
                      split: str) -> tuple[str, str] | None:
    if not isinstance(question, dict) or not {"question_id", "image_id", "question"} <= question.keys():
        return "needs question_id, image_id and question", "malformed entry"
    if question["question_id"] in seen:
        return "duplicated question id", "duplicate question id"
    if not str(question["question"]).strip():
        return "empty question", "empty question"
    if _coco_name(split, question["image_id"]) not in present:
        return f"unknown image id {question['image_id']} (no image file in {split}/)", "unknown image id"
    if annotated:
        ann = annotations.get(question["question_id"])
        if ann is None:
            return "no annotation for this question", "question without annotation"
        if not human_answers(ann):
            return "annotation has no answers", "question without answers"
        if ann.get("image_id", question["image_id"]) != question["image_id"]:
            return (f"the annotation's image id {ann['image_id']} differs from the question's {question['image_id']}",
                    "image id mismatch")
    return None


def _coco_name(split: str, image_id: int) -> str:
    return f"COCO_{split}_{int(image_id):012d}.jpg"


def _field(payload: Any, name: str, path: Path) -> list:
    if not isinstance(payload, dict) or not isinstance(payload.get(name), list):
        raise DataError(f"{path}: expected a JSON object with a '{name}' list (the official VQA v2 layout).")
    return payload[name]


def albef_vqa_table(files: Sequence[str | Path], on_bad_sample: str, cache_dir: str | Path | None = None
                    ) -> tuple[datasets.Dataset, Counter]:
    """Indexes ALBEF-style lists ``[{"question_id", "question", "answer", "image", "dataset"}]``.

    ``answer`` is a list of annotator answers (VQA), a single string (Visual Genome), or absent (test).
    """
    key = source_key(files, extra=f"albef_vqa|{on_bad_sample}")

    def rows(skipped: Counter) -> Iterator[dict]:
        seen: set[int] = set()
        for path in files:
            entries = load_json(path)
            if not isinstance(entries, list):
                raise DataError(f"{path}: expected a JSON list of VQA entries, got {type(entries).__name__}.")
            for position, entry in enumerate(entries):
                row = _albef_row(entry, seen)
                if isinstance(row, tuple):
                    _bad(f"{path}: entry {position}: {row[0]}", row[1], on_bad_sample, skipped)
                    continue
                seen.add(row["question_id"])
                yield row

    return cached_index("albef_vqa", key, VQA_FEATURES, rows, cache_dir)


def _albef_row(entry: Any, seen: set[int]) -> dict | tuple[str, str]:
    if not isinstance(entry, dict) or not {"question_id", "question", "image"} <= entry.keys():
        return "needs question_id, question and image", "malformed entry"
    if entry["question_id"] in seen:
        return f"duplicated question id {entry['question_id']}", "duplicate question id"
    if not str(entry["question"]).strip():
        return "empty question", "empty question"
    answers = entry.get("answer", [])
    answers = [answers] if isinstance(answers, str) else list(answers)
    return {"question_id": int(entry["question_id"]), "image_id": int(entry.get("image_id", -1)),
            "question": str(entry["question"]), "image": str(entry["image"]),
            "dataset": str(entry.get("dataset", "vqa")), "answers": [str(a) for a in answers],
            "question_type": str(entry.get("question_type", "")), "answer_type": str(entry.get("answer_type", "")),
            "multiple_choice_answer": str(entry.get("multiple_choice_answer", ""))}


def _bad(message: str, reason: str, on_bad_sample: str, skipped: Counter) -> None:
    if on_bad_sample == "error":
        raise BadSampleError(f"{message}. Fix the file, or set data.on_bad_sample=skip to leave such rows out.", reason)
    skipped[reason] += 1


def answer_weights(answers: list[str], dataset: str) -> tuple[list[str], list[float]]:
    """Unique answers with TCL's weights: count / number of annotators (VQA), ``VG_ANSWER_WEIGHT`` (Visual Genome)."""
    if dataset == "vg":
        return answers[:1], [VG_ANSWER_WEIGHT] * min(len(answers), 1)
    counts = Counter(answers)
    return list(counts), [count / len(answers) for count in counts.values()]


class VQADataset(TableDataset):
    """Yields ``{"image", "question", "question_id", "answers", "weights", "human_answers"}``: unique answers with
    TCL's weights, and the raw annotator answers for the official soft scores (all empty for test splits).

    Args:
        table: an index from ``official_vqa_table`` or ``albef_vqa_table``.
        image_roots: image folder per ``dataset`` value (``{"vqa": ..., "vg": ...}``).
        transform: image transform.
        reading: the bad-sample policy, question cap (TCL: 30 words at train, 50 at test), image-size guard and seed.
        skipped_at_indexing: rows left out when the table was built, by reason.
        shared_augmentation: every question of an image gets the same augmented image within an epoch.
    """

    def __init__(self, table: datasets.Dataset, image_roots: dict[str, str | Path], transform: Callable,
                 reading: SampleReading = SampleReading(), skipped_at_indexing: Counter | None = None,
                 shared_augmentation: bool = False):
        super().__init__(table, transform, reading, skipped_at_indexing,
                         "no usable VQA questions found. Check data.root, data.vqa_train / data.vqa_eval and the "
                         "skipped-row counts logged while indexing.")
        self.image_roots = {name: Path(path) for name, path in image_roots.items()}
        self.shared_augmentation = shared_augmentation
        # With shared_augmentation, the augmentation key of the sample being loaded and the last image made: the
        # questions of an image come one after the other in a grouped batch and all get the same tensor, so the file
        # is decoded and augmented once per batch instead of once per question (5.4 questions per image in VQA v2).
        self._drawing: int | str | None = None
        self._last_image: tuple[tuple[int | str, Path], torch.Tensor] | None = None
        # The row the augmentation key was read from, for _load to use again: a row read costs about as much as
        # decoding one of the embedded world's images (the formatting of the Arrow row).
        self._last_row: tuple[int, dict[str, Any]] | None = None

    def _augmentation_key(self, key: int) -> int | str:
        """With ``shared_augmentation``, every question of an image gets the same augmented image within an epoch, so
        a batch can encode it once (``VQACollator(share_images=True)``)."""
        if not self.shared_augmentation:
            return key
        epoch, index = divmod(key, len(self))
        row = self.table[index]
        self._last_row = (index, row)
        self._drawing = f"{epoch}:{image_key(row)}"
        return self._drawing

    def _row(self, index: int) -> dict[str, Any]:
        """The table's row ``index``, read once per sample (``_augmentation_key`` may have read it already)."""
        if self._last_row is not None and self._last_row[0] == index:
            return self._last_row[1]
        return self.table[index]

    def image_groups(self) -> list[list[int]]:
        """Row indices grouped by image, in order of first appearance (for ``ShardedEpochSampler(groups=...)``)."""
        groups: dict[str, list[int]] = {}
        columns = self.table.select_columns(["dataset", "image"]).to_dict()
        for index, (dataset, image) in enumerate(zip(columns["dataset"], columns["image"])):
            groups.setdefault(f"{dataset}:{image}", []).append(index)
        return list(groups.values())

    def _load(self, index: int) -> dict[str, Any]:
        row = self._row(index)
        question = pre_question(row["question"], self.reading.max_words)
        if not question:
            raise BadSampleError(f"question {row['question_id']} is empty after normalisation", "empty question")
        answers, weights = answer_weights(row["answers"], row["dataset"])
        return {"image": self._image(self._image_path(row)), "image_key": image_key(row), "question": question,
                "question_id": row["question_id"], "answers": answers, "weights": weights,
                "human_answers": list(row["answers"])}

    def _image(self, path: Path) -> torch.Tensor:
        """The transformed image; with ``shared_augmentation``, the last one again when it was made from the same file
        under the same augmentation key (the same seed, hence the same tensor). The path is part of the key because
        a bad sample is replaced by another row's, drawn under the first one's key."""
        memo_key = (self._drawing, path)
        if self.shared_augmentation and self._last_image is not None and self._last_image[0] == memo_key:
            return self._last_image[1]
        image = self.transform(load_rgb_image(path, self.reading.max_image_pixels))
        if self.shared_augmentation:
            self._last_image = (memo_key, image)
        return image

    def _image_path(self, row: dict[str, Any]) -> Path:
        path = Path(row["image"])
        if path.is_absolute():
            return path
        root = self.image_roots.get(row["dataset"])
        if root is None:
            raise DataError(f"question {row['question_id']}: no image root for dataset '{row['dataset']}' "
                            f"(set data.vg_root for Visual Genome entries).")
        return root / path


def image_key(row: dict[str, Any]) -> str:
    """Names a question's image file (the same for every question about it)."""
    return f"{row['dataset']}:{row['image']}"


class VQACollator:
    """Stacks images and tokenises questions (``[CLS] w1 ... wn``, truncated to ``max_length`` when given).

    ``image_index`` [B] maps each question to its row of ``image``. With ``share_images``, questions about the same
    image file share one row, so the image is encoded once for all of them; only valid when those questions' image
    tensors are identical (deterministic test transforms, or ``VQADataset(shared_augmentation=True)``). Without it
    ``image`` has one row per question.
    """

    def __init__(self, tokenizer: TclTokenizer, max_length: int | None = 25, share_images: bool = False):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.share_images = share_images

    def _images(self, samples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.share_images:
            return torch.stack([s["image"] for s in samples]), torch.arange(len(samples))
        rows: dict[str, int] = {}
        index = [rows.setdefault(s.get("image_key", f"#{i}"), len(rows)) for i, s in enumerate(samples)]
        first = {row: i for i, row in reversed(list(enumerate(index)))}
        return torch.stack([samples[first[row]]["image"] for row in range(len(rows))]), torch.tensor(index)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        text = self.tokenizer.encode_texts([s["question"] for s in samples], self.max_length)
        image, image_index = self._images(samples)
        return {"image": image, "image_index": image_index, "input_ids": text.input_ids,
                "attention_mask": text.attention_mask, "questions": [s["question"] for s in samples],
                "question_ids": torch.tensor([s["question_id"] for s in samples], dtype=torch.long),
                "answers": [s["answers"] for s in samples], "weights": [s["weights"] for s in samples],
                "human_answers": [s["human_answers"] for s in samples],
                "skipped": merge_skipped(samples)}
