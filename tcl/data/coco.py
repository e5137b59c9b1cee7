"""COCO annotation files: loading them, the split folder of an image, and the objects of instances files.

The objects feed the pretraining's auxiliary objectives (``tcl.data.grounding``, ``tcl.data.regions``) and their
evaluation sets; captions files become pretraining tables in ``tcl.data.image_text``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tcl.errors import DataError
from tcl.json_io import load_json

logger = logging.getLogger(__name__)

_COCO_FILE = re.compile(r"COCO_([A-Za-z]+\d*)_\d+\.\w+$")


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


def coco_image_folder(file_name: str, annotation_path: Path) -> str:
    """COCO keeps images of split S in folder S; the split is in the file name (or in the annotation file's name)."""
    match = _COCO_FILE.search(file_name)
    if match:
        return match.group(1)
    match = re.search(r"(?:captions|instances)_(\w+)\.json$", annotation_path.name)
    return match.group(1) if match else ""


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
                        "has one when made by this version: tcl make-data --force")
    names = {category["id"]: category["name"] for category in coco.dataset["categories"]}
    objects = {}
    for image_id, image_annotations in coco.imgToAnns.items():
        image = coco.imgs.get(image_id)
        if image is None:
            continue
        key = f"{coco_image_folder(image['file_name'], path)}/{image['file_name']}"
        objects[key] = [BoxedObject(names[ann["category_id"]], tuple(ann.get("attributes", [])),
                                    tuple(float(v) for v in ann["bbox"])) for ann in image_annotations
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
