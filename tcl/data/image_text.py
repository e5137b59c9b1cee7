"""Image-text pairs for pretraining: COCO captions files, ALBEF/TCL JSON lists, or a Hugging Face datasets table.

Every source becomes a table with an ``image`` column (a path relative to an image root, or an absolute path) and a
``captions`` column (one or more captions; one is drawn per access, as TCL does for list captions). Each sample
yields two independent augmentations of the image (TCL feeds the second one to the momentum encoders).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import datasets
import torch

from tcl.data.bad_samples import merge_skipped
from tcl.data.base import TableDataset
from tcl.data.images import load_rgb_image
from tcl.data.index import cached_index, source_key
from tcl.json_io import load_json, stream_json_list
from tcl.data.shards import read_member
from tcl.text_cleaning import pre_caption
from tcl.data.transforms import ViewWithCrop, box_in_crop, chains_decode_size
from tcl.data.tokenizer import TclTokenizer
from tcl.errors import BadSampleError, DataError

logger = logging.getLogger(__name__)

PAIR_FEATURES = datasets.Features({"image": datasets.Value("string"),
                                   "captions": datasets.Sequence(datasets.Value("string"))})
_COCO_FILE = re.compile(r"COCO_([A-Za-z]+\d*)_\d+\.\w+$")


# ---------------------------------------------------------------------------------------------------------------------
# Sources -> tables


def coco_caption_table(caption_files: Sequence[str | Path], image_root: str | Path, on_bad_sample: str,
                       cache_dir: str | Path | None = None) -> tuple[datasets.Dataset, Counter]:
    """Indexes COCO captions files (read through pycocotools), one row per caption.

    Captions whose image id is not in the file's image list, whose image file is absent from ``image_root``, or that
    are empty are bad samples: counted and left out (``skip``) or reported as an error (``error``).
    """
    image_root = Path(image_root)
    # Which rows are left out depends on the listings of the split folders, so an added or deleted image re-indexes.
    folders = sorted(entry for entry in image_root.iterdir() if entry.is_dir()) if image_root.is_dir() else []
    key = source_key([*caption_files, image_root, *folders], extra=f"coco|{on_bad_sample}")

    def rows(skipped: Counter) -> Iterator[dict]:
        for path in caption_files:
            yield from _coco_rows(Path(path), image_root, on_bad_sample, skipped)

    return cached_index("coco_captions", key, PAIR_FEATURES, rows, cache_dir)


def load_coco(path: Path):
    """A pycocotools COCO object for ``path``, with our JSON error messages and its chatter sent to the log."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = load_json(path)
    if not isinstance(coco.dataset, dict) or "images" not in coco.dataset or "annotations" not in coco.dataset:
        raise DataError(f"{path}: not a COCO annotation file (needs top-level 'images' and 'annotations').")
    with contextlib.redirect_stdout(io.StringIO()) as chatter:
        coco.createIndex()
    logger.debug("pycocotools: %s", chatter.getvalue().strip())
    return coco


def _coco_rows(path: Path, image_root: Path, on_bad_sample: str, skipped: Counter) -> Iterator[dict]:
    coco = load_coco(path)
    listings: dict[str, set[str]] = {}
    for ann in coco.dataset["annotations"]:
        image = coco.imgs.get(ann.get("image_id"))
        if image is None:
            _bad(f"{path}: caption {ann.get('id')} refers to unknown image id {ann.get('image_id')}",
                 "unknown image id", on_bad_sample, skipped)
            continue
        folder = coco_image_folder(image["file_name"], path)
        if folder not in listings:
            listings[folder] = _listing(image_root / folder)
        if image["file_name"] not in listings[folder]:
            _bad(f"{path}: image file {image_root / folder / image['file_name']} (image id {image['id']}) is missing",
                 "missing image", on_bad_sample, skipped)
            continue
        if not pre_caption(str(ann.get("caption") or "")):
            _bad(f"{path}: caption {ann.get('id')} of image {image['id']} is empty", "empty caption", on_bad_sample,
                 skipped)
            continue
        yield {"image": f"{folder}/{image['file_name']}", "captions": [ann["caption"]]}


@dataclass(frozen=True)
class BoxedObject:
    """One object of an instances file: its category name, its attributes (our addition to COCO's layout, as Visual
    Genome has them: "small", "red"), and its box [x, y, width, height] in pixels."""

    category: str
    attributes: tuple[str, ...]
    box: tuple[float, float, float, float]


def coco_objects(instance_files: Sequence[str | Path]) -> dict[str, list[BoxedObject]]:
    """The objects of COCO instances files per image (``folder/file_name``, as the caption table names it); crowd
    annotations are left out."""
    objects: dict[str, list[BoxedObject]] = {}
    for path in instance_files:
        objects.update(objects_in(load_coco(Path(path)), Path(path)))
    return objects


def objects_in(coco, path: Path) -> dict[str, list[BoxedObject]]:
    """``coco_objects`` of one loaded instances file (``path`` names it in errors and tells the split folder)."""
    if "categories" not in coco.dataset:
        raise DataError(f"{path}: not a COCO instances file (needs top-level 'categories'); the generated world "
                        "has one since 2026-12-04: tcl make-data --force")
    names = {category["id"]: category["name"] for category in coco.dataset["categories"]}
    objects = {}
    for image_id, annotations in coco.imgToAnns.items():
        image = coco.imgs.get(image_id)
        if image is None:
            continue
        key = f"{coco_image_folder(image['file_name'], path)}/{image['file_name']}"
        objects[key] = [BoxedObject(names[ann["category_id"]], tuple(ann.get("attributes", [])),
                                    tuple(float(v) for v in ann["bbox"])) for ann in annotations
                        if not ann.get("iscrowd")]
    return objects


def referring_phrases(objects: Sequence[BoxedObject], index: int, varied: bool = False) -> list[str]:
    """The phrases that name ``objects[index]`` alone among ``objects``: its attributes and category ("small red
    circle"), or with ``varied`` every phrase of a subset of its attributes, in their order, and the category
    ("circle", "red circle", ...). A phrase names an object when the category is the object's and the attributes
    are among its own."""
    target = objects[index]
    subsets = itertools.product((False, True), repeat=len(target.attributes)) if varied else \
        [(True,) * len(target.attributes)]
    phrases = []
    for keep in subsets:
        attributes = {a for a, kept in zip(target.attributes, keep) if kept}
        matches = sum(o.category == target.category and attributes <= set(o.attributes) for o in objects)
        if matches == 1:
            phrases.append(" ".join([*(a for a in target.attributes if a in attributes), target.category]))
    return phrases


def coco_image_folder(file_name: str, annotation_path: Path) -> str:
    """COCO keeps images of split S in folder S; the split is in the file name (or in the annotation file's name)."""
    match = _COCO_FILE.search(file_name)
    if match:
        return match.group(1)
    match = re.search(r"(?:captions|instances)_(\w+)\.json$", annotation_path.name)
    return match.group(1) if match else ""


def _listing(folder: Path) -> set[str]:
    return {entry.name for entry in os.scandir(folder)} if folder.is_dir() else set()


def albef_json_table(files: Sequence[str | Path], on_bad_sample: str, cache_dir: str | Path | None = None
                     ) -> tuple[datasets.Dataset, Counter]:
    """Indexes ALBEF/TCL pretraining lists ``[{"image": path, "caption": str | [str, ...]}, ...]``.

    The lists are parsed as they are read (``stream_json_list``), so CC12M's (14 million entries, gigabytes of JSON)
    needs little memory. Image files are not checked here (the lists span millions of files in many folders);
    unreadable images are handled when loaded.
    """
    key = source_key(files, extra=f"albef|{on_bad_sample}")

    def rows(skipped: Counter) -> Iterator[dict]:
        for path in files:
            for position, entry in enumerate(stream_json_list(path)):
                row = _albef_row(entry, f"{path}: entry {position}", on_bad_sample, skipped)
                if row is not None:
                    yield row

    return cached_index("albef_pairs", key, PAIR_FEATURES, rows, cache_dir)


def _albef_row(entry: Any, where: str, on_bad_sample: str, skipped: Counter) -> dict | None:
    if not isinstance(entry, dict) or "image" not in entry or "caption" not in entry:
        _bad(f"{where}: needs 'image' and 'caption' keys, got {str(entry)[:80]}", "malformed entry", on_bad_sample,
             skipped)
        return None
    captions = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
    captions = [str(c) for c in captions if pre_caption(str(c or ""))]
    if not captions:
        _bad(f"{where}: empty caption for image {entry['image']}", "empty caption", on_bad_sample, skipped)
        return None
    return {"image": str(entry["image"]), "captions": captions}


def _bad(message: str, reason: str, on_bad_sample: str, skipped: Counter) -> None:
    if on_bad_sample == "error":
        raise BadSampleError(f"{message}. Fix the annotation, or set data.on_bad_sample=skip to leave such rows out.",
                             reason)
    skipped[reason] += 1


def hf_table(name_or_path: str, image_column: str, caption_column: str, split: str = "train") -> datasets.Dataset:
    """A Hugging Face ``datasets`` table (saved with ``save_to_disk``, or a hub name when reachable)."""
    path = Path(name_or_path)
    table = datasets.load_from_disk(str(path)) if path.exists() else datasets.load_dataset(name_or_path, split=split)
    if isinstance(table, datasets.DatasetDict):
        if split not in table:
            raise DataError(f"{name_or_path}: no split '{split}' (has {list(table)}).")
        table = table[split]
    for column in (image_column, caption_column):
        if column not in table.column_names:
            raise DataError(f"{name_or_path}: no column '{column}' (columns: {table.column_names}). Set "
                            f"data.hf_image_column / data.hf_caption_column.")
    return table


# ---------------------------------------------------------------------------------------------------------------------
# Dataset


class ImageTextDataset(TableDataset):
    """Yields ``{"image", "image_aug", "caption"}``: two augmented views and one normalised caption; with
    ``objects`` and ``grounding``, also ``"ground_phrase"`` and ``"ground_boxes"``: one of the image's objects drawn
    at random, a phrase that names it alone by all its attributes (``referring_phrases``) and its box in the first
    view (``box_in_crop``; phrase "" and box None when no object can be named alone or the crop cut it off); with
    ``objects`` and ``region_classes``, ``"regions"``: every object the first view still holds, as (box in the view,
    its labels: one per class of ``region_classes``, ``region_labels``).

    Args:
        table: rows with an image (path string, or a decoded image for HF tables) and caption(s).
        image_root: folder that relative image paths are resolved against.
        transform: image transform applied twice, independently.
        aug_transform: the second view's transform instead (the momentum encoders' view), if given.
        objects: the objects of each image path (``coco_objects``), for the grounding term.
        grounding: with ``objects``, give the grounding term's phrase and box (off when only the region term reads
            the objects).
        region_classes: the region classification term's classes of words, in the head's order: the categories,
            then any attribute classes (``objects`` needed).
        on_bad_sample: ``skip`` or ``error``.
        image_column / caption_column: column names in ``table``.
    """

    def __init__(self, table: datasets.Dataset, image_root: str | Path, transform: Callable,
                 on_bad_sample: str = "skip",
                 max_words: int = 30, max_image_pixels: int | None = None, image_column: str = "image",
                 caption_column: str = "captions", skipped_at_indexing: Counter | None = None, seed: int = 0,
                 aug_transform: Callable | None = None,
                 objects: dict[str, list[BoxedObject]] | None = None,
                 grounding: bool = True, region_classes: Sequence[Sequence[str]] | None = None,
                 grounding_objects: int = 1):
        super().__init__(table, transform, on_bad_sample, max_words, max_image_pixels, skipped_at_indexing, seed,
                         "no usable image-text pairs found. Check data.root, data.pretrain_files and data.image_root "
                         "(and the skipped-row counts logged while indexing).")
        self.image_root = Path(image_root)
        self.image_column = image_column
        self.caption_column = caption_column
        self.aug_transform = aug_transform or transform
        self.objects = objects
        self.grounding = grounding
        self.grounding_objects = grounding_objects
        self.region_classes = region_classes
        self.view_with_crop = ViewWithCrop(transform) if objects is not None else None
        # Large JPEGs decode at the scale the random crops need; boxes (objects) need the stored pixels' coordinates.
        self.decode_size = chains_decode_size(transform, self.aug_transform) if objects is None else None

    def _load(self, index: int) -> dict[str, Any]:
        row = self.table[index]
        caption = draw_caption(row[self.caption_column], self.max_words, row[self.image_column])
        image = self._image(row[self.image_column])
        if self.objects is None:
            return {"image": self.transform(image), "image_aug": self.aug_transform(image), "caption": caption}
        # The same draws as without objects, in the same order, then the object's: the views do not change.
        objects = self.objects.get(str(row[self.image_column]), [])
        view, crop = self.view_with_crop(image)
        image_aug = self.aug_transform(image)
        sample = {"image": view, "image_aug": image_aug, "caption": caption}
        if self.grounding:
            sample.update(self._grounding_fields(objects, crop))
        if self.region_classes is not None:
            in_view = [(box_in_crop(list(o.box), crop), region_labels(o, self.region_classes)) for o in objects]
            sample["regions"] = [(box, labels) for box, labels in in_view if box is not None]
        return sample

    def _grounding_fields(self, objects: list[BoxedObject], crop: tuple[int, int, int, int]) -> dict[str, Any]:
        """Up to ``grounding_objects`` different objects drawn at random among those a phrase names alone, their
        phrases joined by "and" and their boxes in the view, in that order (``ground_boxes``: None for a place no
        object fills; phrase "" and no box when no object can be named alone or the crop cut the first one off)."""
        named = [(k, found) for k in range(len(objects))
                 if (found := referring_phrases(objects, k))]
        phrases, boxes = [], []
        while named and len(boxes) < self.grounding_objects:
            k, found = named.pop(int(torch.randint(len(named), ())))
            phrase, box = found[int(torch.randint(len(found), ()))], box_in_crop(list(objects[k].box), crop)
            if box is None and not boxes:
                break
            if box is not None:
                phrases.append(phrase)
                boxes.append(box)
        boxes += [None] * (self.grounding_objects - len(boxes))
        phrase = pre_caption(" and ".join(phrases), self.max_words) if phrases else ""
        return {"ground_phrase": phrase, "ground_boxes": boxes}

    def _image(self, value: Any):
        if isinstance(value, (str, Path)):
            path = Path(value)
            return load_rgb_image(path if path.is_absolute() else self.image_root / path, self.max_image_pixels,
                                  self.decode_size)
        from tcl.data.images import as_rgb_image

        if value is None:
            raise BadSampleError("image missing from the table row", "missing image")
        if isinstance(value, dict) and "shard" in value:  # a member of a tar shard (tcl.data.shards)
            try:
                return as_rgb_image(read_member(value), self.max_image_pixels, decode_size=self.decode_size)
            except BadSampleError as error:
                raise BadSampleError(f"{value['shard']}: {value['name']}: {error}", error.reason) from None
        return as_rgb_image(value)


def draw_caption(captions: Any, max_words: int, image: Any) -> str:
    """One of an image's captions drawn at random (torch's global RNG, seeded per sample), normalised
    (``pre_caption``); BadSampleError ``empty caption`` when there is none."""
    captions = captions if isinstance(captions, list) else [captions]
    caption = pre_caption(str(captions[int(torch.randint(len(captions), ()))] or ""), max_words) if captions else ""
    if not caption:
        raise BadSampleError(f"empty caption for image {image!r}", "empty caption")
    return caption


class PretrainCollator:
    """Stacks the views and tokenises captions TCL's way (``[CLS] w1 ... wn``, at most ``max_length`` tokens)."""

    def __init__(self, tokenizer: TclTokenizer, max_length: int = 25):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        text = self.tokenizer.encode_texts([s["caption"] for s in samples], self.max_length)
        batch = {"image": torch.stack([s["image"] for s in samples]),
                 "image_aug": torch.stack([s["image_aug"] for s in samples]),
                 "input_ids": text.input_ids, "attention_mask": text.attention_mask,
                 "captions": [s["caption"] for s in samples], "skipped": merge_skipped(samples)}
        if samples and "ground_boxes" in samples[0]:
            batch["grounding"] = self._grounding(samples)
        if samples and "regions" in samples[0]:
            batch["regions"] = collate_regions([s["regions"] for s in samples])
        return batch

    def _grounding(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The grounding term's phrases ``[B, L]`` and target boxes ``[B, N, 4]`` (centre x, centre y, width, height
        in fractions of the view; N objects per phrase), with ``valid`` [B, N]: the boxes that exist (the others are
        ignored)."""
        phrases = self.tokenizer.encode_texts([s["ground_phrase"] for s in samples], self.max_length)
        boxes = torch.tensor([[box or (0.0, 0.0, 0.0, 0.0) for box in s["ground_boxes"]] for s in samples],
                             dtype=torch.float32)
        return {"input_ids": phrases.input_ids, "attention_mask": phrases.attention_mask, "boxes": boxes,
                "valid": torch.tensor([[box is not None for box in s["ground_boxes"]] for s in samples])}



def region_labels(obj: BoxedObject, classes: Sequence[Sequence[str]]) -> tuple[int, ...]:
    """An object's label in each class of words: the first class holds the categories (the object's must be
    there), the others attributes (-100, ignored, when the object has none of a class's words)."""
    categories, *attribute_classes = classes
    labels = [list(categories).index(obj.category)]
    for words in attribute_classes:
        labels.append(next((k for k, word in enumerate(words) if word in obj.attributes), -100))
    return tuple(labels)


def collate_regions(regions: list[list[tuple[tuple[float, float, float, float], tuple[int, ...]]]]
                    ) -> dict[str, torch.Tensor]:
    """The region classification term's boxes ``[B, R, 4]`` (centre x, centre y, width, height in fractions of the
    view) and labels ``[B, R, C]`` (``region_labels``, C classes), R the most objects of any row; padding rows have
    labels -100 (ignored)."""
    most = max((len(row) for row in regions), default=0)
    classes = max((len(labels) for row in regions for _, labels in row), default=1)
    boxes = torch.zeros(len(regions), most, 4)
    labels = torch.full((len(regions), most, classes), -100, dtype=torch.long)
    for b, row in enumerate(regions):
        for r, (box, row_labels) in enumerate(row):
            boxes[b, r], labels[b, r] = torch.tensor(box), torch.tensor(row_labels)
    return {"boxes": boxes, "labels": labels}
