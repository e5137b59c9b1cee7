"""The pretraining loader's work per CPU core at 256 and 384 px on real photographs, ours against the official TCL's.

    taskset -c 1 python benchmarks/bench_loader.py                              # ours only
    taskset -c 1 python benchmarks/bench_loader.py --tcl-checkout /path/TCL --deps /path/loader_deps \\
        --json benchmarks/results/bench_loader.json

A sample is what a DataLoader worker does for one pretraining pair: read and decode the JPEG, then two augmented
views with TCL's pretraining chain (RandomResizedCrop 0.2-1, colour jitter, grayscale, blur, flip, RandomAugment(2, 7)).
Ours is the project's dataset built from ``configs/pretrain_4m.yaml`` (uint8 views; normalisation happens on the
training device); the official one is TCL's ``create_dataset('pretrain', ...)`` imported from a checkout you provide
(never copied here), whose RandomAugment needs OpenCV: ``pip install --no-deps --target /path/loader_deps
opencv-python-headless``. One thread, rounds alternating ours / official over the same files; the median round.

The photographs: scikit-image's sample photographs (astronaut, coffee, chelsea, ...) cut and resized to COCO's
640 x 480 as JPEGs (``--photo-size`` for others: web images are often larger, and large JPEGs decode at the scale
the random crops need), 200 of them, made once in ``data/bench_photos[_WxH]`` (needs ``pip install scikit-image``),
or any folder of JPEGs with ``--photos``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
          "retina.jpg", "rocket.jpg", "color.png")


def make_photos(folder: Path, count: int = 200, seed: int = 0, size: tuple[int, int] = (640, 480)) -> list[Path]:
    """``count`` JPEGs of ``size`` (COCO's 640 x 480 by default) cut from scikit-image's photographs (made once)."""
    existing = sorted(folder.glob("*.jpg"))
    if len(existing) >= count:
        return existing[:count]
    try:
        import skimage.data
    except ImportError:
        raise SystemExit("the photographs come from scikit-image's samples: pip install scikit-image, or pass "
                         "--photos with a folder of JPEGs") from None
    from PIL import Image

    base = Path(skimage.data.__file__).parent
    sources = [Image.open(base / name).convert("RGB") for name in PHOTOS]
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        photo = sources[index % len(sources)]
        width, height = photo.size
        scale = rng.uniform(0.6, 1.0)
        crop_w, crop_h = int(width * scale), int(min(height, width * scale * 0.75))
        left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
        image = photo.crop((left, top, left + crop_w, top + crop_h)).resize(size, Image.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        image.save(folder / f"{index:04d}.jpg", quality=90)
    return sorted(folder.glob("*.jpg"))[:count]


def write_list(photos: list[Path], path: Path) -> Path:
    path.write_text(json.dumps([{"image": str(p.resolve()), "caption": "a photograph of a thing"} for p in photos]))
    return path


def our_dataset(listing: Path, size: int):
    from tcl.config import load_config
    from tcl.data.builders import build_pretrain_dataset

    config = load_config(REPO / "configs/pretrain_4m.yaml", [
        f"model.image_size={size}", f"data.root={listing.parent}", "data.pretrain_source=albef_json",
        f"data.pretrain_files=[{listing.name}]", f"data.cache_dir={listing.parent / 'cache'}"])
    return build_pretrain_dataset(config)


def official_dataset(listing: Path, size: int, checkout: Path, deps: Path):
    sys.path[:0] = [str(deps), str(checkout)]
    from dataset import create_dataset  # the official TCL code, from the checkout

    return create_dataset("pretrain", {"image_res": size, "train_file": [str(listing)]})


def time_round(dataset, count: int) -> float:
    """Seconds per sample over the whole set."""
    start = time.perf_counter()
    for index in range(count):
        dataset[index]
    return (time.perf_counter() - start) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384])
    parser.add_argument("--photos", default=None, help="a folder of JPEGs (default: data/bench_photos, generated)")
    parser.add_argument("--count", type=int, default=200, help="photographs per round")
    parser.add_argument("--photo-size", default="640x480",
                        help="generated photographs' WIDTHxHEIGHT (default COCO's 640x480; web images are often "
                             "larger, e.g. 1600x1200)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tcl-checkout", default=None, help="a checkout of github.com/uta-smile/TCL")
    parser.add_argument("--deps", default=None, help="a folder with opencv-python-headless for the official side")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if bool(args.tcl_checkout) != bool(args.deps):
        parser.error("--tcl-checkout and --deps go together (see the docstring)")
    torch.set_num_threads(1)
    width, height = (int(side) for side in args.photo_size.split("x"))
    folder = REPO / ("data/bench_photos" if (width, height) == (640, 480) else f"data/bench_photos_{width}x{height}")
    photos = (sorted(Path(args.photos).glob("*.jpg"))[:args.count] if args.photos
              else make_photos(folder, args.count, size=(width, height)))
    listing = write_list(photos, Path(tempfile.mkdtemp(prefix="bench_loader_")) / "pairs.json")
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "photos": len(photos), "photo_size": args.photo_size,
              "cpus_allowed": len(os.sched_getaffinity(0)),
              "command": " ".join(["python benchmarks/bench_loader.py", *(argv if argv is not None else sys.argv[1:])]),
              "sizes": {}}
    for size in args.sizes:
        sides = {"ours": our_dataset(listing, size)}
        if args.tcl_checkout:
            sides["official"] = official_dataset(listing, size, Path(args.tcl_checkout), Path(args.deps))
        times: dict[str, list[float]] = {name: [] for name in sides}
        torch.manual_seed(0)
        for _ in range(args.rounds):
            for name, dataset in sides.items():
                times[name].append(time_round(dataset, len(photos)))
        row = {name: {"ms_per_sample": 1000 * statistics.median(values),
                      "samples_per_s_per_core": 1 / statistics.median(values)} for name, values in times.items()}
        if "official" in row:
            row["ours_over_official"] = (row["ours"]["samples_per_s_per_core"]
                                         / row["official"]["samples_per_s_per_core"])
        result["sizes"][str(size)] = row
        print(f"{size} px: " + ", ".join(f"{name} {value['samples_per_s_per_core']:.1f} samples/s per core "
                                         f"({value['ms_per_sample']:.1f} ms)" for name, value in row.items()
                                         if isinstance(value, dict))
              + (f", ours / official {row['ours_over_official']:.2f}" if "official" in row else ""), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
