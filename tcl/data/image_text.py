"""Image-text pairs for pretraining: COCO captions files, ALBEF/TCL JSON lists, or a Hugging Face datasets table.

Every source becomes a table with an ``image`` column (a path relative to an image root, or an absolute path) and a
``captions`` column (one or more captions; one is drawn per access, as TCL does for list captions). Each sample
yields two independent augmentations of the image (TCL feeds the second one to the momentum encoders).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import datasets
import torch

from tcl.data.bad_samples import merge_skipped
from tcl.data.base import SampleReading, TableDataset
from tcl.data.coco import BoxedObject, coco_image_folder, load_coco
from tcl.data.grounding import collate_grounding
from tcl.data.images import load_rgb_image
from tcl.data.index import cached_index, source_key
from tcl.json_io import stream_json_list
from tcl.data.regions import collate_regions
from tcl.data.shards import read_member
from tcl.text_cleaning import pre_caption
from tcl.data.transforms import Crop, ViewWithCrop, chains_decode_size
from tcl.data.tokenizer import TclTokenizer
from tcl.errors import BadSampleError, DataError

logger = logging.getLogger(__name__)

PAIR_FEATURES = datasets.Features({"image": datasets.Value("string"),
                                   "captions": datasets.Sequence(datasets.Value("string"))})


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


class ObjectTargets(Protocol):
    """An auxiliary objective's data need: sample fields made from the image's objects and the first view's crop
    (``tcl.data.grounding.GroundingTargets``, ``tcl.data.regions.RegionTargets``)."""

    def __call__(self, objects: list[BoxedObject], crop: Crop) -> dict[str, Any]: ...


class ImageTextDataset(TableDataset):
    """Yields ``{"image", "image_aug", "caption"}``: two augmented views and one normalised caption; with ``objects``,
    also the fields each of ``object_targets`` makes from the image's objects and the first view's crop.

    Args:
        table: rows with an image (path string, or a decoded image for HF tables) and caption(s).
        image_root: folder that relative image paths are resolved against.
        transform: image transform applied twice, independently.
        reading: the bad-sample policy, caption cap, image-size guard and augmentation seed.
        aug_transform: the second view's transform instead (the momentum encoders' view), if given.
        image_column / caption_column: column names in ``table``.
        skipped_at_indexing: rows left out when the table was built, by reason.
        objects: the objects of each image path (``tcl.data.coco.coco_objects``), for ``object_targets``.
        object_targets: the auxiliary objectives' sample fields, in order (their random draws come after the views').
    """

    def __init__(self, table: datasets.Dataset, image_root: str | Path, transform: Callable,
                 reading: SampleReading = SampleReading(), aug_transform: Callable | None = None,
                 image_column: str = "image", caption_column: str = "captions",
                 skipped_at_indexing: Counter | None = None, objects: dict[str, list[BoxedObject]] | None = None,
                 object_targets: Sequence[ObjectTargets] = ()):
        super().__init__(table, transform, reading, skipped_at_indexing,
                         "no usable image-text pairs found. Check data.root, data.pretrain_files and data.image_root "
                         "(and the skipped-row counts logged while indexing).")
        if object_targets and objects is None:
            raise ValueError("object_targets need the images' objects (objects=coco_objects(...))")
        self.image_root = Path(image_root)
        self.image_column = image_column
        self.caption_column = caption_column
        self.aug_transform = aug_transform or transform
        self.objects = objects
        self.object_targets = tuple(object_targets)
        self.view_with_crop = ViewWithCrop(transform) if objects is not None else None
        # Large JPEGs decode at the scale the random crops need; boxes (objects) need the stored pixels' coordinates.
        self.decode_size = chains_decode_size(transform, self.aug_transform) if objects is None else None

    def _load(self, index: int) -> dict[str, Any]:
        row = self.table[index]
        caption = draw_caption(row[self.caption_column], self.reading.max_words, row[self.image_column])
        image = self._image(row[self.image_column])
        if self.objects is None:
            return {"image": self.transform(image), "image_aug": self.aug_transform(image), "caption": caption}
        # The same draws as without objects, in the same order, then the targets': the views do not change.
        objects = self.objects.get(str(row[self.image_column]), [])
        view, crop = self.view_with_crop(image)
        sample = {"image": view, "image_aug": self.aug_transform(image), "caption": caption}
        for targets in self.object_targets:
            sample.update(targets(objects, crop))
        return sample

    def _image(self, value: Any):
        if isinstance(value, (str, Path)):
            path = Path(value)
            return load_rgb_image(path if path.is_absolute() else self.image_root / path, self.reading.max_image_pixels,
                                  self.decode_size)
        from tcl.data.images import as_rgb_image

        if value is None:
            raise BadSampleError("image missing from the table row", "missing image")
        if isinstance(value, dict) and "shard" in value:  # a member of a tar shard (tcl.data.shards)
            try:
                return as_rgb_image(read_member(value), self.reading.max_image_pixels, decode_size=self.decode_size)
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
            batch["grounding"] = collate_grounding(samples, self.tokenizer, self.max_length)
        if samples and "regions" in samples[0]:
            batch["regions"] = collate_regions([s["regions"] for s in samples])
        return batch

