"""Image-text pairs as WebDataset tar shards in img2dataset's layout, written from any source the project reads.

A shard ``NNNNN.tar`` holds, per sample with key ``KKKKKKKKK`` (its row in the source, zero-padded):
``KKKKKKKKK.jpg`` (or ``.png`` / ``.webp``: the image file's own bytes, untouched; other formats are re-encoded as
JPEG), ``KKKKKKKKK.txt`` (the first caption) and ``KKKKKKKKK.json`` (``{"key", "image", "captions"}``: the source
path and every caption). Tar headers carry no time, owner or mode of this machine, so the same source gives the same
bytes. Each shard is written under a temporary name and renamed when complete. ``shards.json`` beside them lists the
shards with their sample counts (a reader knows an epoch's size without opening them) and the samples left out.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from tqdm.auto import tqdm

from tcl.atomic import atomic_write, write_json_atomic
from tcl.data.images import load_rgb_image
from tcl.errors import BadSampleError

logger = logging.getLogger(__name__)

LISTING = "shards.json"
# Leading bytes of the formats kept as they are, and the extension WebDataset readers decode them by.
_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"))


@dataclass
class ShardReport:
    """What ``write_shards`` wrote: shard names with their sample counts, and the samples left out by reason."""

    shards: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)

    @property
    def samples(self) -> int:
        return sum(self.shards.values())


def write_shards(rows: Iterable[dict], image_root: str | Path, out: str | Path, samples_per_shard: int = 1000,
                 total: int | None = None, show_progress: bool = True) -> ShardReport:
    """Writes ``rows`` (``{"image": path relative to image_root or absolute, "captions": [str, ...]}``) as shards in
    ``out``; an image that is missing or does not decode is left out and counted by reason."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be at least 1, got {samples_per_shard}")
    out, image_root = Path(out), Path(image_root)
    out.mkdir(parents=True, exist_ok=True)
    report, batch = ShardReport(), []
    for key, row in enumerate(tqdm(rows, total=total, desc="shards", unit="sample", disable=not show_progress)):
        sample = _sample(key, row, image_root, report.skipped)
        if sample is not None:
            batch.append(sample)
        if len(batch) == samples_per_shard:
            _write_shard(out, report, batch)
            batch = []
    if batch:
        _write_shard(out, report, batch)
    write_json_atomic({"shards": report.shards, "samples": report.samples, "skipped": dict(report.skipped)},
                      out / LISTING, indent=2)
    return report


def _sample(key: int, row: dict, image_root: Path, skipped: Counter) -> dict[str, bytes] | None:
    path = image_root / row["image"]
    captions = [str(caption) for caption in row["captions"] if str(caption or "").strip()]
    if not captions:
        skipped["empty caption"] += 1
        return None
    try:
        data, extension = _image_bytes(path)
    except BadSampleError as error:
        skipped[error.reason] += 1
        logger.debug("left out of the shards: %s", error)
        return None
    name = f"{key:09d}"
    meta = {"key": name, "image": str(row["image"]), "captions": captions}
    return {f"{name}.{extension}": data, f"{name}.txt": captions[0].encode("utf-8"),
            f"{name}.json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}


def _image_bytes(path: Path) -> tuple[bytes, str]:
    """The file's bytes when they are a JPEG, PNG or WebP that decodes; other decodable images as JPEG."""
    image = load_rgb_image(path)  # raises BadSampleError for a missing, unreadable or corrupt file
    data = path.read_bytes()
    for magic, extension in _MAGIC:
        if data.startswith(magic):
            return data, extension
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return data, "webp"
    encoded = io.BytesIO()
    image.save(encoded, format="JPEG", quality=95)
    return encoded.getvalue(), "jpg"


def _write_shard(out: Path, report: ShardReport, samples: list[dict[str, bytes]]) -> None:
    name = f"{len(report.shards):05d}.tar"
    with atomic_write(out / name) as temporary, tarfile.open(temporary, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for member, data in sample.items():
                info = tarfile.TarInfo(member)
                info.size, info.mode = len(data), 0o444
                tar.addfile(info, io.BytesIO(data))
    report.shards[name] = len(samples)
