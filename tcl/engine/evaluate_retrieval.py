"""Zero-shot retrieval evaluation of a pretraining run (TCL's ``Retrieval.py`` protocol), also run during pretraining.

    tcl evaluate-retrieval --run runs/pretrain_tiny [--split val2014] [--max-images 100] [--captions-per-image 1]
    python scripts/evaluate_retrieval.py --run runs/pretrain_tiny

Ranks every image against every caption of a COCO captions file by ITC similarity, re-ranks the top
``eval.retrieval_k_test`` by ITM, and reports image→text and text→image R@1/5/10 and their mean, the same recalls
by ITC alone, ITM accuracy on true vs random captions, MLM accuracy on masked content words and the feature
uniformity of both towers. Writes ``retrieval_<split>[_<N>images][_<K>caps].json`` into the run folder.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable

from tcl.atomic import write_json_atomic
from tcl.config import Config, load_config
from tcl.data.builders import build_tokenizer
from tcl.evaluation.coco_sets import coco_grounding_set, coco_region_set, coco_retrieval_set
from tcl.data.shapes import CONTENT_WORD_GROUPS
from tcl.data.tokenizer import TclTokenizer
from tcl.evaluation.grounding import evaluate_grounding
from tcl.evaluation.regions import evaluate_regions
from tcl.evaluation.retrieval import evaluate_pretraining
from tcl.evaluation.sharding import ALONE, Shard

logger = logging.getLogger("tcl.evaluate_retrieval")


def run(args: argparse.Namespace) -> int:
    from tcl.inference.image_text import load_pretrained

    run_dir = Path(args.run)
    overrides = []
    if args.split:
        overrides.append(f"eval.retrieval_file=annotations/captions_{args.split}.json")
    for key, value in (("retrieval_images", args.max_images), ("retrieval_captions_per_image",
                                                              args.captions_per_image),
                       ("retrieval_k_test", args.k_test)):
        if value is not None:
            overrides.append(f"eval.{key}={value}")
    config = load_config(run_dir / "config.yaml", overrides)
    model = load_pretrained(run_dir)
    probe = retrieval_probe(config, build_tokenizer(config))
    results = probe(model)
    path = run_dir / results_name(config)
    write_json_atomic(results, path, indent=2)
    print(format_results(results))
    print(f"results written to {path}")
    return 0


def results_name(config: Config) -> str:
    """``retrieval_<split>[_<N>images][_<K>caps].json``: settings that change the numbers are in the name
    (``retrieval.json`` when ``eval.retrieval_file`` is null: there is then nothing to write)."""
    ev = config.eval
    if ev.retrieval_file is None:
        return "retrieval.json"
    name = f"retrieval_{Path(ev.retrieval_file).stem.replace('captions_', '')}"
    if ev.retrieval_images is not None:
        name += f"_{ev.retrieval_images}images"
    if ev.retrieval_captions_per_image is not None:
        name += f"_{ev.retrieval_captions_per_image}caps"
    return name + ".json"


def retrieval_probe(config: Config, tokenizer: TclTokenizer, shard: Shard = ALONE
                    ) -> Callable[[Any], dict[str, float]] | None:
    """A function model → retrieval metrics on ``eval.retrieval_file`` (None when that is null or absent). With a
    ``shard``, every process of a run loads its share of the images, and every process calls the function at the
    same step: each scores its share and all of them return the whole set's metrics."""
    ev = config.eval
    if ev.retrieval_file is None:
        return None
    path = Path(ev.retrieval_file)
    path = path if path.is_absolute() else Path(config.data.root) / path
    if not path.is_file():
        logger.warning("%s not found: no retrieval evaluation (set eval.retrieval_file, or null to silence this)",
                       path)
        return None
    data = coco_retrieval_set(path, Path(config.data.root) / config.data.image_root, tokenizer,
                              config.model.image_size, ev.retrieval_images, ev.retrieval_captions_per_image,
                              config.model.max_text_len, config.data.max_caption_words, shard)
    word_groups = content_word_groups(tokenizer)
    grounding = _grounding_set(config, tokenizer, path, shard)
    regions = _region_set(config, path, shard)

    def probe(model) -> dict[str, float]:
        results = evaluate_pretraining(model, data, word_groups, tokenizer.mask_id, ev.retrieval_k_test,
                                       ev.batch_size, shard)
        if grounding is not None:
            results.update(evaluate_grounding(model, grounding, ev.batch_size, shard))
        if regions is not None:
            results.update(evaluate_regions(model, regions, ev.batch_size, shard))
        return results

    # What the probe measures: the processes that share it must all have found the same files.
    probe.parts = ("retrieval", *(["grounding"] if grounding is not None else []),
                   *(["regions"] if regions is not None else []))
    return probe


def _grounding_set(config: Config, tokenizer: TclTokenizer, captions_file: Path, shard: Shard):
    """The grounding evaluation of a model trained with ``loss.grounding_weight``: the instances file beside the
    retrieval captions file (``instances_<split>.json``), the same number of images; None without either."""
    instances = _instances_beside(captions_file)
    if config.loss.grounding_weight <= 0 or instances is None:
        return None
    return coco_grounding_set(instances, Path(config.data.root) / config.data.image_root, tokenizer,
                              config.model.image_size, config.eval.retrieval_images, config.model.max_text_len,
                              config.data.max_caption_words, shard=shard)


def _region_set(config: Config, captions_file: Path, shard: Shard):
    """The region evaluation of a model trained with ``loss.region_class_weight``: the instances file beside the
    retrieval captions file, the same number of images; None without either."""
    instances = _instances_beside(captions_file)
    if config.loss.region_class_weight <= 0 or instances is None:
        return None
    return coco_region_set(instances, Path(config.data.root) / config.data.image_root, config.model.image_size,
                           [list(config.loss.region_categories), *config.loss.region_attributes],
                           config.eval.retrieval_images, shard)


def _instances_beside(captions_file: Path) -> Path | None:
    """``instances_<split>.json`` beside ``captions_<split>.json``, if there is one."""
    instances = captions_file.with_name(captions_file.name.replace("captions_", "instances_"))
    return instances if instances != captions_file and instances.is_file() else None


def content_word_groups(tokenizer: TclTokenizer) -> dict[str, list[list[int]]]:
    """Token ids of the content words (colours, shapes, sizes, numbers) that are single tokens of the vocabulary,
    by group and class of interchangeable words."""
    vocab = tokenizer.tokenizer.get_vocab()
    return {group: [[vocab[word] for word in words if word in vocab] for words in classes]
            for group, classes in CONTENT_WORD_GROUPS.items()}


def format_results(results: dict[str, float]) -> str:
    both = "  ".join(f"{key} {results[key]:.1f}" for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5",
                                                             "t2i_r10"))
    line = [f"retrieval (ITC + ITM re-ranking, %): {both}  mean {results['r_mean']:.1f}",
            f"  ITC alone: i2t_r1 {results['itc_i2t_r1']:.1f}  t2i_r1 {results['itc_t2i_r1']:.1f};  "
            f"ITM accuracy {results['itm_accuracy']:.1f}"]
    if "mlm_word_accuracy" in results:
        groups = ", ".join(f"{group} {results[f'mlm_{group}_accuracy']:.1f}" for group in CONTENT_WORD_GROUPS
                           if f"mlm_{group}_accuracy" in results)
        line[-1] += f";  MLM content-word accuracy {results['mlm_word_accuracy']:.1f} ({groups})"
    line[-1] += (f";  uniformity image {results['uniformity_image']:.2f} / "
                 f"text {results['uniformity_text']:.2f}")
    swaps = ", ".join(f"{group} {results[f'swap_itm_{group}']:.1f} / {results[f'swap_itc_{group}']:.1f}"
                      for group in CONTENT_WORD_GROUPS if f"swap_itm_{group}" in results)
    if "grounding_iou50" in results:
        line.append(f"  grounding: {results['grounding_iou50']:.1f} % of {results['grounding_phrases']} phrases "
                    f"found with IoU >= 0.5 (mean IoU {results['grounding_mean_iou']:.1f} %)")
    if "region_category_accuracy" in results:
        parts = "".join(f", {name} {results[f'region_{name}_accuracy']:.1f} %" for name in ("attribute", "position")
                        if f"region_{name}_accuracy" in results)
        line.append(f"  region head on {results['region_objects']} held-out objects: categories "
                    f"{results['region_category_accuracy']:.1f} %{parts}")
    if swaps:
        line.append(f"  the true caption over one with a swapped word (ITM / ITC, %, chance 50): {swaps}")
    return "\n".join(line)

