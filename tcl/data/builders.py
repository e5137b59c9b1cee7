"""Datasets, tokenizer and loaders built from a ``Config``: the one place that maps config keys to data objects."""

from __future__ import annotations

import os

import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from tcl.config import Config
from tcl.data.base import SampleReading
from tcl.data.coco import BoxedObject, coco_objects
from tcl.data.grounding import GroundingTargets
from tcl.data.image_text import (ImageTextDataset, ObjectTargets, PretrainCollator, albef_json_table,
                                 coco_caption_table, hf_table)
from tcl.data.regions import RegionTargets
from tcl.data.sampling import ShardedEpochSampler
from tcl.data.shards import expand_shards, listed_samples, shard_table
from tcl.data.streaming import ShardSequence, SourceReader, StreamDataset, StreamLoader, table_chunks
from tcl.data.tokenizer import TclTokenizer, load_tokenizer, run_tokenizer_dir
from tcl.data.transforms import pretrain_transform, test_transform, vqa_train_transform
from tcl.data.vqa import VQACollator, VQADataset, albef_vqa_table, official_vqa_table
from tcl.errors import DataError
from tcl.pretrained_parts import missing_parts_error, tokenizer_part

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)


def build_tokenizer(config: Config) -> TclTokenizer:
    """The tokenizer ``tokenizer_source`` names."""
    source = tokenizer_source(config)
    if not config.data.tokenizer and not Path(source).is_dir():  # a local folder by construction: never a hub name
        raise missing_parts_error([(tokenizer_part(source), "data.tokenizer is null, so the tokenizer is looked for "
                                                            "beside the data, in <data.root>/tokenizer: not there")],
                                  other_way="for the generated data, run `tcl make-data` (it builds the vocabulary)")
    return TclTokenizer(load_tokenizer(source))


def tokenizer_source(config: Config) -> str:
    """The tokenizer named by ``data.tokenizer``; else, when fine-tuning starts from a run that saved its tokenizer
    (``vqa.init``), that one; else the one built beside the data (``<data.root>/tokenizer``)."""
    if config.data.tokenizer:
        return str(config.data.tokenizer)
    inherited = run_tokenizer_dir(config.vqa.init) if config.vqa.init else None
    return str(inherited or Path(config.data.root) / "tokenizer")


def run_tokenizer(run_dir: str | Path, config: Config) -> TclTokenizer:
    """The tokenizer a run trained with: the one it saved, or (runs older than that) ``build_tokenizer``'s."""
    saved = run_tokenizer_dir(run_dir)
    return TclTokenizer(load_tokenizer(saved)) if saved is not None else build_tokenizer(config)


def _resolve(config: Config, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else Path(config.data.root) / path


def pretrain_transforms(config: Config) -> tuple[Callable, Callable]:
    """TCL's pretraining augmentation: the online view's and the momentum view's (the same chain, drawn twice)."""
    data = config.data
    transform = pretrain_transform(config.model.image_size, crop_scale=(data.crop_scale_min, 1.0), hflip=data.hflip,
                                   color_jitter=data.color_jitter, randaugment=data.randaugment)
    return transform, transform


def build_pretrain_loader(config: Config, tokenizer: TclTokenizer, rank: int, world_size: int
                          ) -> DataLoader | StreamLoader:
    """The pretraining batches: streamed shards (``webdataset``), or a sampled loader over any other source."""
    if config.data.pretrain_source == "webdataset":
        return build_stream_loader(config, tokenizer, rank, world_size)
    return build_loader(build_pretrain_dataset(config), pretrain_collator(config, tokenizer), config.train.batch_size,
                        shuffle=True, num_workers=config.data.num_workers, seed=config.train.seed, drop_last=True,
                        rank=rank, world_size=world_size)


def build_stream_loader(config: Config, tokenizer: TclTokenizer, rank: int, world_size: int) -> StreamLoader:
    """Streamed data (``tcl.data.streaming``): each entry of ``data.pretrain_files`` one source — tar shards (a brace
    pattern), or a ``.json`` COCO captions file or ALBEF list, indexed and read in chunks; an epoch of
    ``data.epoch_samples`` samples (0: the shards' listed count and the tables' rows)."""
    data = config.data
    sources, tables, shards = [], [], []
    for pattern in data.pretrain_files:
        if pattern.endswith(".json"):
            table, root, _ = pretrain_pairs(_single_source(config, pattern))
            tables.append((table, root, pattern))
            sources.append(table_chunks(len(tables) - 1, len(table)))
        else:
            sources.append([_shard_url(config, name) for name in expand_shards(pattern)])
            shards += sources[-1]
    sequence = ShardSequence(tuple(entry for source in sources for entry in source),
                             tuple(len(source) for source in sources),
                             tuple(data.source_weights) if data.source_weights else None, config.train.seed)
    epoch_samples = data.epoch_samples or (listed_samples(shards) + sum(len(table) for table, _, _ in tables))
    transform, aug_transform = pretrain_transforms(config)
    dataset = StreamDataset(sequence, pretrain_collator(config, tokenizer), transform, aug_transform,
                            config.train.batch_size, rank, world_size, data.shuffle_buffer,
                            sample_reading(config, data.max_caption_words), SourceReader(tables))
    logger.info("streaming %d source(s) (%d shards, %d indexed files): %d samples per epoch", len(sources),
                len(shards), len(tables), epoch_samples)
    return StreamLoader(dataset, usable_workers(data.num_workers), epoch_samples, config.train.seed,
                        config.train.grad_accum_steps)


def _single_source(config: Config, file: str) -> Config:
    """``config`` reading only ``file``: a COCO captions file (a JSON object) or an ALBEF list (a JSON array)."""
    path = _resolve(config, file)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found; check data.root and data.pretrain_files.")
    with open(path, "rb") as handle:
        start = handle.read(4096).lstrip()[:1]
    kind = "coco" if start == b"{" else "albef_json"
    return replace(config, data=replace(config.data, pretrain_source=kind, pretrain_files=[file]))


def _shard_url(config: Config, name: str) -> str:
    """A local shard resolved against ``data.root`` (and checked to exist); a ``pipe:`` command or URL as given."""
    if name.startswith("pipe:") or "://" in name:
        return name
    path = _resolve(config, name)
    if not path.is_file():
        raise DataError(f"{path}: shard not found; check data.root and data.pretrain_files (brace ranges such as "
                        f"shards/{{00000..00099}}.tar are expanded).")
    return str(path)


def build_pretrain_dataset(config: Config) -> ImageTextDataset:
    """Image-text pairs from ``data.pretrain_source`` with TCL's two-view pretraining augmentation."""
    data = config.data
    transform, aug_transform = pretrain_transforms(config)
    reading = sample_reading(config, data.max_caption_words)
    if data.pretrain_source == "hf":
        # A saved table under data.root, or else a hub name.
        first = _resolve(config, data.pretrain_files[0])
        table = hf_table(str(first) if first.exists() else data.pretrain_files[0], data.hf_image_column,
                         data.hf_caption_column)
        return ImageTextDataset(table, _resolve(config, data.image_root), transform, reading, aug_transform,
                                image_column=data.hf_image_column, caption_column=data.hf_caption_column)
    table, image_root, skipped = pretrain_pairs(config)
    objects, targets = _object_targets(config) if data.pretrain_source == "coco" else (None, [])
    return ImageTextDataset(table, image_root, transform, reading, aug_transform, skipped_at_indexing=skipped,
                            objects=objects, object_targets=targets)


def sample_reading(config: Config, max_words: int) -> SampleReading:
    """The run's ``data.*`` settings every dataset reads samples with (``max_words``: the text's cap)."""
    data = config.data
    return SampleReading(data.on_bad_sample, max_words, data.max_image_pixels, config.train.seed)


def _object_targets(config: Config) -> tuple[dict[str, list[BoxedObject]] | None, list[ObjectTargets]]:
    """The instances files' objects and the auxiliary objectives' sample fields, for the objectives the loss
    weights switch on (none: no objects read)."""
    loss = config.loss
    targets: list[ObjectTargets] = []
    if loss.grounding_weight <= 0 and loss.region_class_weight <= 0:
        return None, targets
    objects = coco_objects(_instances_files(config))
    if loss.grounding_weight > 0:
        targets.append(GroundingTargets(loss.grounding_objects, config.data.max_caption_words))
    if loss.region_class_weight > 0:
        targets.append(RegionTargets([_listed_categories(config, objects), *loss.region_attributes]))
    return objects, targets


def pretrain_pairs(config: Config) -> tuple[datasets.Dataset, Path, Counter]:
    """The ``{"image", "captions"}`` table of a ``coco``, ``albef_json`` or ``shards`` pretraining source, the folder
    its image paths are relative to, and the rows left out while indexing (logged)."""
    data = config.data
    files = [_resolve(config, f) for f in data.pretrain_files]
    if data.pretrain_source == "coco":
        image_root = _resolve(config, data.image_root)
        table, skipped = coco_caption_table(files, image_root, data.on_bad_sample, data.cache_dir)
    elif data.pretrain_source == "shards":
        streams = [f for f in data.pretrain_files if "://" in f or f.startswith("pipe:")]
        if streams:
            raise DataError(f"data.pretrain_files {streams[0]!r}: data.pretrain_source: shards reads local tar files "
                            f"(streams from pipes or URLs are not supported yet); copy the shards to a local or "
                            f"shared filesystem.")
        shards = [_resolve(config, name) for pattern in data.pretrain_files for name in expand_shards(pattern)]
        table, skipped = shard_table(shards, data.on_bad_sample, data.cache_dir)
        image_root = Path(data.root)
    elif data.pretrain_source == "albef_json":
        # ALBEF lists hold paths relative to the working directory or absolute; relative ones resolve against root.
        table, skipped = albef_json_table(files, data.on_bad_sample, data.cache_dir)
        image_root = Path(data.root)
    else:
        raise DataError(f"data.pretrain_source {data.pretrain_source!r} has no pairs table (coco, albef_json and "
                        f"shards do)")
    _log_index_skips("pretraining pairs", skipped)
    return table, image_root, skipped


def _instances_files(config: Config) -> list[Path]:
    """``data.pretrain_instances`` resolved, each checked to exist (with what to do when it does not)."""
    paths = [_resolve(config, f) for f in config.data.pretrain_instances]
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: instances file not found. The region classification and grounding terms "
                            "(loss.region_class_weight, loss.grounding_weight) read boxes from it: run `tcl make-data "
                            "--force` for the embedded world, point data.pretrain_instances at COCO's instances files, "
                            "or turn the terms off (loss.region_class_weight=0 loss.grounding_weight=0).")
    return paths


def _listed_categories(config: Config, objects: dict[str, list[BoxedObject]]) -> list[str]:
    """``loss.region_categories``, checked to name every category of the instances files (a head with a class
    missing could not be trained on those objects, and a typo would silently drop a category)."""
    listed = list(config.loss.region_categories)
    missing = sorted({o.category for found in objects.values() for o in found} - set(listed))
    if missing:
        raise DataError(f"{', '.join(config.data.pretrain_instances)}: categories {missing} are not in "
                        f"loss.region_categories {listed}; list every category of the instances files.")
    return listed


def build_vqa_dataset(config: Config, train: bool) -> VQADataset:
    """The VQA training set (``data.vqa_train``, train augmentation) or evaluation set (``data.vqa_eval``)."""
    data = config.data
    size = config.model.image_size
    if train:
        transform = vqa_train_transform(size, crop_scale=(max(data.crop_scale_min, 0.5), 1.0), hflip=data.hflip,
                                        color_jitter=data.color_jitter, randaugment=data.randaugment)
    else:
        transform = test_transform(size)
    image_root = _resolve(config, data.image_root)
    names = data.vqa_train if train else [data.vqa_eval]
    tables, skipped = [], Counter()
    for name in names:
        if data.vqa_source == "official":
            table, dropped = official_vqa_table(data.root, name, image_root, data.on_bad_sample, data.cache_dir)
        else:
            table, dropped = albef_vqa_table([_resolve(config, name)], data.on_bad_sample, data.cache_dir)
        tables.append(table)
        skipped.update(dropped)
    if train and data.vqa_extra_train:
        table, dropped = albef_vqa_table([_resolve(config, name) for name in data.vqa_extra_train],
                                         data.on_bad_sample, data.cache_dir)
        tables.append(table)
        skipped.update(dropped)
    _log_index_skips("VQA questions", skipped)
    import datasets

    table = tables[0] if len(tables) == 1 else datasets.concatenate_datasets(tables)
    roots = {"vqa": image_root}
    if data.vg_root:
        roots["vg"] = _resolve(config, data.vg_root)
    max_words = data.max_question_words if train else max(data.max_question_words, 50)
    return VQADataset(table, roots, transform, sample_reading(config, max_words), skipped,
                      shared_augmentation=train and config.vqa.group_by_image)


def _log_index_skips(what: str, skipped: Counter) -> None:
    if skipped:
        logger.warning("left out %d %s while indexing: %s", sum(skipped.values()), what,
                       ", ".join(f"{reason} {count}" for reason, count in skipped.most_common()))


def build_loader(dataset: Dataset, collate: Callable, batch_size: int, shuffle: bool, num_workers: int,
                 seed: int = 0, drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 groups: list[list[int]] | None = None) -> DataLoader:
    """A DataLoader over a ``ShardedEpochSampler`` (``loader.sampler.set_epoch(epoch, start_batch)`` selects the
    epoch and resumes mid-epoch; ``groups`` keeps those indices together). Worker errors are re-raised in the caller,
    never swallowed."""
    sampler = ShardedEpochSampler(len(dataset), batch_size, rank, world_size, seed, shuffle, drop_last, groups)
    num_workers = usable_workers(num_workers)
    # A private generator: creating an iterator would otherwise draw from the global RNG, which a resumed run
    # restores from its checkpoint, and so shift every later random draw.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(seed))


def usable_workers(requested: int) -> int:
    """``data.num_workers`` capped at the CPUs this process may run on (``taskset``, cgroups): more workers than
    CPUs only compete with the training process, and PyTorch warns about each such loader."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return min(requested, available)


def pretrain_collator(config: Config, tokenizer: TclTokenizer) -> PretrainCollator:
    return PretrainCollator(tokenizer, config.model.max_text_len)


def vqa_collator(config: Config, tokenizer: TclTokenizer, train: bool) -> VQACollator:
    # TCL truncates questions to 25 tokens at train time only. Evaluation images are deterministic, so questions about
    # the same image always share its encoding; training ones only when augmented alike (vqa.group_by_image).
    return VQACollator(tokenizer, config.model.max_text_len if train else None,
                       share_images=not train or config.vqa.group_by_image)


def check_data_root(config: Config) -> None:
    """Raises a DataError with what to do when ``data.root`` does not exist."""
    if not Path(config.data.root).exists():
        raise DataError(f"data.root = {config.data.root} does not exist. Run `tcl make-data --out {config.data.root}` "
                        f"for the embedded dataset, or point data.root at your COCO/VQA folder.")
