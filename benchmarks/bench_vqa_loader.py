"""The VQA fine-tuning loader's time per batch when questions are grouped by image (``vqa.group_by_image``): each image
decoded and augmented once per batch against once per question.

    taskset -c 1 python benchmarks/bench_vqa_loader.py                    # the embedded world and 384-px photographs
    taskset -c 1 python benchmarks/bench_vqa_loader.py --json benchmarks/results/bench_vqa_loader.json

Two loaders of the project: ``vqa_tiny`` on the generated shapes world (``data/shapes``, ``tcl make-data`` makes it),
and ``vqa`` (TCL's 384-px chain) with ``vqa.group_by_image=true`` on an official-layout VQA set over 200 photographs
at COCO's 640 x 480 (``benchmarks/bench_loader.py``'s, from scikit-image's samples), 5 or 6 questions each (VQA v2 has
5.4 questions per image). Both sides are the same dataset: "per question" forgets the last image before every
question, which is what the loader did before it kept it. One thread, the two sides alternating batch by batch over
the same sampler keys; the median over batches.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_loader import make_photos  # noqa: E402


def write_vqa_set(photos: list[Path], root: Path) -> Path:
    """An official-layout VQA v2 train2014 split over ``photos`` (symlinked as COCO file names), 5 or 6 questions per
    image, written once."""
    questions_path = root / "annotations" / "v2_OpenEnded_mscoco_train2014_questions.json"
    if questions_path.is_file():
        return root
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "images" / "train2014").mkdir(parents=True, exist_ok=True)
    questions, annotations = [], []
    for image_id, photo in enumerate(photos, start=1):
        link = root / "images" / "train2014" / f"COCO_train2014_{image_id:012d}.jpg"
        if not link.exists():
            link.symlink_to(photo.resolve())
        for k in range(5 + image_id % 2):
            question_id = image_id * 10 + k
            questions.append({"image_id": image_id, "question": f"what is in the picture number {k}?",
                              "question_id": question_id})
            annotations.append({"image_id": image_id, "question_id": question_id, "question_type": "what is",
                                "answer_type": "other", "multiple_choice_answer": "a thing",
                                "answers": [{"answer": "a thing", "answer_confidence": "yes", "answer_id": i + 1}
                                            for i in range(10)]})
    (root / "annotations" / "v2_mscoco_train2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    questions_path.write_text(json.dumps({"questions": questions}))
    return root


def grouped_loader(config_name: str, overrides: list[str]):
    """The dataset and training loader of ``config_name`` with questions grouped by image."""
    from tcl.config import load_config
    from tcl.data.builders import build_loader, build_tokenizer, build_vqa_dataset, vqa_collator

    config = load_config(REPO / "configs" / f"{config_name}.yaml", ["vqa.group_by_image=true", *overrides])
    dataset = build_vqa_dataset(config, train=True)
    collate = vqa_collator(config, build_tokenizer(config), train=True)
    return dataset, build_loader(dataset, collate, config.train.batch_size, shuffle=True, num_workers=0,
                                 groups=dataset.image_groups(), drop_last=True)


def time_batches(dataset, loader, batches: int) -> dict[str, float]:
    """Median ms per batch of the loader as it is and forgetting the last image before every question, alternating
    batch by batch (each batch's keys loaded by both)."""
    times: dict[str, list[float]] = {"per image": [], "per question": []}
    images = []
    sampler_batches = iter(loader.batch_sampler)
    for _ in range(batches):
        keys = next(sampler_batches)
        for side in ("per image", "per question"):
            dataset._last_image = None
            start = time.perf_counter()
            samples = []
            for key in keys:
                if side == "per question":
                    dataset._last_image = None
                samples.append(dataset[key])
            batch = loader.collate_fn(samples)
            times[side].append((time.perf_counter() - start) * 1000)
        images.append(batch["image"].shape[0])
    result = {side: statistics.median(values) for side, values in times.items()}
    result["images_per_batch"] = statistics.mean(images)
    result["questions_per_batch"] = float(len(keys))
    result["ratio"] = result["per question"] / result["per image"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32, help="questions per batch")
    parser.add_argument("--photos", default=None, help="a folder of JPEGs (default: data/bench_photos, generated)")
    parser.add_argument("--shapes", default=str(REPO / "data" / "shapes"), help="the generated world")
    parser.add_argument("--work", default=str(REPO / "data" / "bench_vqa_photos"),
                        help="where the photographs' VQA set is written (once)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work)
    photos = sorted(Path(args.photos).glob("*.jpg")) if args.photos else make_photos(REPO / "data" / "bench_photos")
    photo_root = write_vqa_set(photos, work)
    common = [f"data.cache_dir={work / 'cache'}", f"train.batch_size={args.batch_size}"]
    cases = {"vqa_tiny, shapes world (64 px)": ("vqa_tiny", [f"data.root={args.shapes}", *common]),
             "vqa, 640x480 photographs (384 px)": ("vqa", [f"data.root={photo_root}", "data.vqa_train=[train2014]",
                                                           "data.vqa_extra_train=[]",
                                                           f"data.tokenizer={args.shapes}/tokenizer", *common])}
    results = {}
    print("| loader | questions / images per batch | per question (ms) | per image (ms) | ratio |")
    print("|---|---|---|---|---|")
    for name, (config_name, overrides) in cases.items():
        dataset, loader = grouped_loader(config_name, overrides)
        result = results[name] = time_batches(dataset, loader, args.batches)
        print(f"| {name} | {result['questions_per_batch']:.0f} / {result['images_per_batch']:.1f} | "
              f"{result['per question']:.1f} | {result['per image']:.1f} | {result['ratio']:.2f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"),
                                               "machine": platform.processor() or platform.machine(),
                                               "torch_threads": 1, "batches": args.batches, "results": results},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
