"""Image-text pairs as WebDataset tar shards in img2dataset's layout, written from any source the project reads.

A shard ``NNNNN.tar`` holds, per sample with key ``KKKKKKKKK`` (its row in the source, zero-padded):
``KKKKKKKKK.jpg`` (or ``.png`` / ``.webp``: the image file's own bytes, untouched; other formats are re-encoded as
JPEG), ``KKKKKKKKK.txt`` (the first caption) and ``KKKKKKKKK.json`` (``{"key", "image", "captions"}``: the source
path and every caption). ``tcl make-shards`` writes the rows in a seeded random order (``--keep-order``: the
source's), so that the several captions of an image, adjacent in COCO's and Visual Genome's lists, do not sit
together in a stream's shuffle buffer. Tar headers carry no time, owner or mode of this machine, so the same source
gives the same bytes. Each shard is written under a temporary name and renamed when complete. ``shards.json``
beside them lists the shards with their sample counts (a reader knows an epoch's size without opening them) and the
samples left out.

Reading (``data.pretrain_source: shards``): local shards are indexed once (``shard_table``: per sample, the shard,
the byte offset and size of its image member, its captions; cached like every index) and then read at random
(``read_member``), so the sampler's guarantees hold as for files: each process and worker takes its own samples,
every process the same number of steps, and a resumed epoch continues with exactly the samples it had left.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import datasets
from braceexpand import braceexpand

from tqdm.auto import tqdm

from tcl.atomic import atomic_write, write_json_atomic
from tcl.data.images import load_rgb_image
from tcl.data.index import cached_index, source_key
from tcl.errors import BadSampleError, DataError

logger = logging.getLogger(__name__)

LISTING = "shards.json"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SHARD_FEATURES = datasets.Features({
    "image": {"shard": datasets.Value("string"), "offset": datasets.Value("int64"), "size": datasets.Value("int64"),
              "name": datasets.Value("string")},
    "captions": datasets.Sequence(datasets.Value("string"))})
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
                 total: int | None = None, show_progress: bool = True, keys: Iterable[int] | None = None
                 ) -> ShardReport:
    """Writes ``rows`` (``{"image": path relative to image_root or absolute, "captions": [str, ...]}``) as shards in
    ``out``, each sample named by its entry of ``keys`` (default: its position); an image that is missing or does not
    decode is left out and counted by reason."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be at least 1, got {samples_per_shard}")
    out, image_root = Path(out), Path(image_root)
    out.mkdir(parents=True, exist_ok=True)
    report, batch = ShardReport(), []
    rows = tqdm(rows, total=total, desc="shards", unit="sample", disable=not show_progress)
    for key, row in zip(keys if keys is not None else itertools.count(), rows):
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


def expand_shards(pattern: str) -> list[str]:
    """``cc3m/{00000..00331}.tar`` → the 332 names, zero-padded as written (img2dataset's shard lists); also
    ``{a,b}`` alternatives (bash's brace expansion, as WebDataset reads shard lists)."""
    return list(braceexpand(pattern))


def shard_table(shards: list[Path], on_bad_sample: str, cache_dir: str | Path | None = None
                ) -> tuple[datasets.Dataset, Counter]:
    """Indexes local tar shards: one row per sample with an image member, ``{"image": {"shard", "offset", "size",
    "name"}, "captions"}`` (captions from ``<key>.json``'s ``captions``, else ``<key>.txt``; ``name``, the image's
    source path when the JSON gives it). Samples without an image or a
    caption are bad samples (counted, or an error with ``data.on_bad_sample: error``)."""
    for shard in shards:
        if not shard.is_file():
            raise DataError(f"{shard}: shard not found; check data.root and data.pretrain_files (brace ranges such "
                            f"as shards/{{00000..00099}}.tar are expanded).")
    key = source_key(shards, extra=f"shards|{on_bad_sample}")

    def rows(skipped: Counter) -> Iterator[dict]:
        for shard in shards:
            for name, members in _samples(shard):
                row = _shard_row(shard, name, members, skipped, on_bad_sample)
                if row is not None:
                    yield row

    return cached_index("shard_samples", key, SHARD_FEATURES, rows, cache_dir)


def read_member(reference: dict) -> bytes:
    """The bytes of an image member indexed by ``shard_table``."""
    with open(reference["shard"], "rb") as handle:
        handle.seek(reference["offset"])
        data = handle.read(reference["size"])
    if len(data) != reference["size"]:
        raise BadSampleError(f"{reference['shard']}: the member at byte {reference['offset']} is cut short (the "
                             f"shard changed after indexing?)", "corrupt image")
    return data


def _samples(shard: Path) -> Iterator[tuple[str, dict[str, tuple[tarfile.TarFile, tarfile.TarInfo]]]]:
    """(key, {extension: (tar, member)}) per sample, in the shard's order (a sample's members are adjacent)."""
    try:
        with tarfile.open(shard) as tar:
            current, members = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                key, _, extension = member.name.partition(".")
                if key != current and members:
                    yield current, members
                    members = {}
                current = key
                members[extension.lower()] = (tar, member)
            if members:
                yield current, members
    except tarfile.TarError as error:
        raise DataError(f"{shard}: not a readable tar file ({error}); re-write or re-download the shard.") from None


def _shard_row(shard: Path, key: str, members: dict, skipped: Counter, on_bad_sample: str) -> dict | None:
    image = image_member(members)
    image = image[1] if image is not None else None
    meta = sample_meta(_read(members["json"]) if "json" in members else None)
    captions = sample_captions(meta, _read(members["txt"]) if "txt" in members else None)
    problem = ("missing image", "no image member") if image is None else \
        ("empty caption", "no caption (.txt or .json captions)") if not captions else None
    if problem is not None:
        if on_bad_sample == "error":
            raise BadSampleError(f"{shard}: sample {key}: {problem[1]}. Fix the shard, or set data.on_bad_sample=skip "
                                 f"to leave such samples out.", problem[0])
        skipped[problem[0]] += 1
        return None
    name = str(meta.get("image") or f"{shard.name}/{key}")
    return {"image": {"shard": str(shard), "offset": image.offset_data, "size": image.size, "name": name},
            "captions": captions}


def _read(entry: tuple[tarfile.TarFile, tarfile.TarInfo]) -> bytes:
    tar, member = entry
    return tar.extractfile(member).read()


def sample_meta(data: bytes | None) -> dict:
    """A sample's ``<key>.json`` as a dict ({} when absent or not a JSON object)."""
    try:
        value = json.loads(data) if data is not None else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def sample_captions(meta: dict, txt: bytes | None) -> list[str]:
    """A sample's captions: its JSON's ``captions`` list (written by ``tcl make-shards``), else its ``<key>.txt``
    (img2dataset's caption); blank ones dropped."""
    captions = meta.get("captions") if isinstance(meta.get("captions"), list) else None
    if captions is None and txt is not None:
        captions = [txt.decode("utf-8", errors="replace")]
    return [str(caption) for caption in captions or [] if str(caption or "").strip()]


def image_member(members: dict) -> object | None:
    """The first image member of a sample (``{extension: member}``), or None."""
    return next((members[ext] for ext in IMAGE_EXTENSIONS if ext in members), None)


def listed_samples(shards: list[str]) -> int:
    """How many samples ``shards`` hold by their listings: ``shards.json`` beside them (``tcl make-shards``) or
    img2dataset's ``<shard>_stats.json`` (``successes``). DataError naming the first shard no listing counts (a
    stream from a pipe or URL has none): then ``data.epoch_samples`` must say how long an epoch is."""
    total, listings = 0, {}
    for shard in shards:
        path = Path(shard)
        if shard.startswith("pipe:") or "://" in shard:
            count = None
        else:
            if path.parent not in listings:
                listing = path.parent / LISTING
                listings[path.parent] = json.loads(listing.read_text()).get("shards", {}) if listing.is_file() else {}
            count = listings[path.parent].get(path.name)
            stats = path.with_name(f"{path.name.split('.')[0]}_stats.json")
            if count is None and stats.is_file():
                count = json.loads(stats.read_text()).get("successes")
        if count is None:
            raise DataError(f"{shard}: no listing counts its samples (shards.json or img2dataset's _stats.json beside "
                            f"it), so the epoch's length is unknown: set data.epoch_samples (all processes together; "
                            f"e.g. 2,900,000 for CC3M).")
        total += int(count)
    return total
