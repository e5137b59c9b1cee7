"""A retrieval evaluation set from a COCO captions file: the first images (by id) and their captions, decoded once.

TCL evaluates retrieval on COCO-format splits (5 captions per image); ``captions_per_image`` keeps only the first
captions of each image (the generated world's first caption is the full listing of the scene, the one its
retrieval numbers use).

With a ``shard`` (``tcl.evaluation.sharding``), a process of a run that shares the evaluation decodes only its own
images; the set is the same for every process otherwise (which images, in which order, every caption).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tcl.data.coco import coco_image_folder, load_coco, objects_in, referring_phrases
from tcl.data.regions import collate_regions, region_labels
from tcl.data.images import load_rgb_image
from tcl.text_cleaning import pre_caption
from tcl.data.tokenizer import TclTokenizer
from tcl.data.transforms import test_transform
from tcl.errors import DataError
from tcl.evaluation.grounding import GroundingSet
from tcl.evaluation.regions import RegionSet
from tcl.evaluation.retrieval import RetrievalSet
from tcl.evaluation.sharding import ALONE, Shard


def coco_retrieval_set(captions_file: str | Path, image_root: str | Path, tokenizer: TclTokenizer, image_size: int,
                       max_images: int | None = None, captions_per_image: int | None = None,
                       max_text_len: int | None = None, max_words: int = 30, shard: Shard = ALONE) -> RetrievalSet:
    """Images with at least one caption, in image-id order, each with its captions in annotation order (the images
    ``shard`` holds decoded).

    Raises:
        DataError: the file is missing, or no listed image has both a caption and a readable file.
    """
    captions_file, image_root = Path(captions_file), Path(image_root)
    if not captions_file.is_file():
        raise DataError(f"{captions_file}: captions file not found. Run `tcl make-data` for the embedded data, or "
                        f"point eval.retrieval_file at a COCO captions file.")
    coco = load_coco(captions_file)
    transform = test_transform(image_size)
    images, positions, texts, text_image = [], [], [], []
    position = -1  # of the last image taken
    for image_id in sorted(coco.imgs):
        captions = [pre_caption(str(a.get("caption") or ""), max_words) for a in coco.imgToAnns.get(image_id, [])]
        captions = [c for c in captions if c][:captions_per_image]
        if not captions:
            continue
        info = coco.imgs[image_id]
        path = image_root / coco_image_folder(info["file_name"], captions_file) / info["file_name"]
        if not path.is_file():
            raise DataError(f"{captions_file}: image file {path} (image id {image_id}) is missing. Check data.root and "
                            f"data.image_root.")
        position += 1
        if shard.takes(position):
            images.append(transform(load_rgb_image(path)))
            positions.append(position)
        text_image += [position] * len(captions)
        texts += captions
        if max_images is not None and position + 1 >= max_images:
            break
    num_images = position + 1
    if num_images < 2:
        raise DataError(f"{captions_file}: retrieval needs at least 2 captioned images, found {num_images}.")
    encoded = tokenizer.encode_texts(texts, max_text_len)
    return RetrievalSet(_stack(images, image_size), encoded.input_ids, encoded.attention_mask,
                        torch.tensor(text_image), texts, torch.tensor(positions, dtype=torch.long), num_images)


def _stack(images: list[torch.Tensor], image_size: int) -> torch.Tensor:
    """[N, 3, S, S]; a process that holds none of a small set's images gets an empty batch."""
    return torch.stack(images) if images else torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)


def coco_grounding_set(instances_file: str | Path, image_root: str | Path, tokenizer: TclTokenizer, image_size: int,
                       max_images: int | None = None, max_text_len: int | None = None,
                       max_words: int = 30, category_only: bool = False, shard: Shard = ALONE) -> GroundingSet:
    """The first images (by id) of a COCO instances file that have objects, each with the phrases of the objects
    that their full phrase names alone (``referring_phrases``; with ``category_only`` the category name alone, for
    the objects it names alone: "circle") and their boxes, in fractions of the whole image (what ``test_transform``
    shows). With a ``shard``, only the images it holds, with their phrases."""
    instances_file, image_root = Path(instances_file), Path(image_root)
    coco = load_coco(instances_file)
    phrases = {key: _phrases(objects, category_only) for key, objects in objects_in(coco, instances_file).items()}
    held, count = _first_images(coco, instances_file, phrases.get, max_images, shard)
    if not count:
        raise DataError(f"{instances_file}: no image with an object whose phrase names it alone.")
    transform = test_transform(image_size)
    images, texts, image_index, boxes = [], [], [], []
    for _, key in held:
        image = load_rgb_image(image_root / key)
        width, height = image.size
        images.append(transform(image))
        for phrase, box in phrases[key]:
            texts.append(pre_caption(phrase, max_words))
            image_index.append(len(images) - 1)
            boxes.append(box_fractions(box, width, height))
    # A process may hold none of a small set's images: no phrases to encode.
    encoded = tokenizer.encode_texts(texts, max_text_len) if texts else None
    input_ids, attention_mask = ((encoded.input_ids, encoded.attention_mask) if encoded is not None else
                                 (torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long)))
    return GroundingSet(_stack(images, image_size), input_ids, attention_mask,
                        torch.tensor(image_index, dtype=torch.long),
                        torch.tensor(boxes, dtype=torch.float32).view(-1, 4), texts, [image_id for image_id, _ in held])


def _first_images(coco, annotations_file: Path, items, max_images: int | None, shard: Shard
                  ) -> tuple[list[tuple[int, str]], int]:
    """(image id, file key) of the images ``shard`` holds among the first ``max_images`` (by id) for which
    ``items(key)`` is not empty, and how many such images there are in all."""
    held, count = [], 0
    for image_id in sorted(coco.imgs):
        if max_images is not None and count >= max_images:
            break
        info = coco.imgs[image_id]
        key = f"{coco_image_folder(info['file_name'], annotations_file)}/{info['file_name']}"
        if not items(key):
            continue
        if shard.takes(count):
            held.append((image_id, key))
        count += 1
    return held, count


def _phrases(objects, category_only: bool) -> list[tuple[str, tuple[float, ...]]]:
    """(phrase, box) of each object that the phrase names alone: the full phrase, or the category name alone."""
    found = []
    for k, obj in enumerate(objects):
        phrases = referring_phrases(objects, k, varied=category_only)
        phrases = [p for p in phrases if p == obj.category] if category_only else phrases
        if phrases:
            found.append((phrases[0], obj.box))
    return found


def coco_region_set(instances_file: str | Path, image_root: str | Path, image_size: int,
                    classes: list[list[str]], max_images: int | None = None, shard: Shard = ALONE) -> RegionSet:
    """The first images (by id) of a COCO instances file that have objects, with every object's box (fractions of
    the whole image, what ``test_transform`` shows) and labels in ``classes`` (categories, then attribute classes;
    ``region_labels``). With a ``shard``, only the images it holds."""
    instances_file, image_root = Path(instances_file), Path(image_root)
    coco = load_coco(instances_file)
    objects = {key: [o for o in found if o.category in classes[0]]
               for key, found in objects_in(coco, instances_file).items()}
    held, count = _first_images(coco, instances_file, objects.get, max_images, shard)
    if not count:
        raise DataError(f"{instances_file}: no image with an object of the categories {classes[0]}.")
    transform = test_transform(image_size)
    images, regions = [], []
    for _, key in held:
        image = load_rgb_image(image_root / key)
        width, height = image.size
        images.append(transform(image))
        regions.append([(box_fractions(o.box, width, height), region_labels(o, classes)) for o in objects[key]])
    batch = collate_regions(regions) if regions else {
        "boxes": torch.zeros(0, 0, 4), "labels": torch.zeros(0, 0, len(classes), dtype=torch.long)}
    return RegionSet(_stack(images, image_size), batch["boxes"], batch["labels"], [image_id for image_id, _ in held])


def box_fractions(box, width: float, height: float) -> tuple[float, float, float, float]:
    """A COCO box [x, y, width, height] in pixels as (centre x, centre y, width, height) in fractions of the
    image."""
    x, y, w, h = box
    return (x + w / 2) / width, (y + h / 2) / height, w / width, h / height
