"""Image-text pairs streamed from WebDataset tar shards (``data.pretrain_source: webdataset``), resumable exactly.

Shards in img2dataset's layout (``<key>.jpg|png|webp``, ``<key>.txt``, optional ``<key>.json``) are read as
streams, whatever ``webdataset.gopen`` opens: local paths, ``pipe:`` commands (``pipe:aws s3 cp s3://b/x.tar -``),
``http(s)://`` URLs. Nothing needs random access or an index. A COCO captions file or an ALBEF list may join a
streamed run as a source of its own: indexed as usual, its rows are read in chunks of ``TABLE_CHUNK``, each an entry
of the shard sequence like a shard (``SourceReader``).

**The shard sequence.** Positions 0, 1, 2, ... of an endless sequence name shards: without weights, position ``g``
is shard ``g mod N`` of pass ``g div N``'s seeded permutation of all N shards (every source's, concatenated: one pass
reads every sample of every source once, as TCL's concatenation does); with ``data.source_weights``, position ``g``
is a seeded draw of a source by weight and a shard of it (with replacement, as open_clip's resampled mode).

**Dealing.** Process ``r`` of ``R`` takes positions ``g = r + R q``; its loader worker ``w`` of ``W`` the local
indices ``q = w, w + W, w + 2W, ...``: every shard of a pass goes to exactly one worker of one process. Streams never
end, so every process takes the same number of steps however the shards divide; an epoch is
``data.epoch_samples`` samples (by default the shards' listed count), and the stream runs on across epochs.

**Shuffling.** Each worker keeps a buffer of ``data.shuffle_buffer`` samples and hands out one drawn at random
(seeded by the worker and a draw counter), refilling from its shards; it batches and collates its own samples. A
sample's augmentation is seeded by its position (shard position and ordinal in the shard).

**Resuming.** Each batch carries its worker's state after it (``StreamState``: the shards or parts of shards still to
read, the next dealt index, the buffer as references). ``StreamLoader`` keeps the state of the last batch it handed
on from each worker, and a checkpoint saves them per process. A resumed run gives worker ``k`` the state of the
worker whose batch comes next, and refills the buffers by re-reading those references: the batches continue exactly
as in an uninterrupted run. With another number of workers, the unread parts (buffers, partly read shards, dealt
shards no worker began) are dealt afresh: the epoch continues with every sample it had left, once, in another order.
Another number of processes is refused (a stream's position is per process).
"""

from __future__ import annotations

import functools
import json
import logging
import random
import tarfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tcl.data.bad_samples import warn_skip
from tcl.data.base import SampleReading
from tcl.data.image_text import PretrainCollator, draw_caption
from tcl.data.images import as_rgb_image
from tcl.data.sampling import seeded_sample
from tcl.data.shards import image_member, sample_captions, sample_meta
from tcl.data.transforms import chains_decode_size
from tcl.errors import BadSampleError, DataError, TclError

logger = logging.getLogger(__name__)

# After this many shards in a row without one usable sample the shard list is almost certainly wrong.
MAX_EMPTY_SHARDS = 20
# An indexed source (COCO captions, ALBEF list) joins a stream as chunks of this many rows, each read like a shard.
TABLE_CHUNK = 1000
TABLE_PREFIX = "table:"


@dataclass(frozen=True)
class ShardSequence:
    """Which shard each position of the endless shard sequence names (see the module's docstring)."""

    shards: tuple[str, ...]  # every source's shards, source after source
    source_sizes: tuple[int, ...]  # shards per source, in that order
    weights: tuple[float, ...] | None = None  # one per source: resampled mode
    seed: int = 0

    def __post_init__(self):
        if not self.shards:
            raise DataError("no shards to stream: data.pretrain_files names none.")

    def shard(self, position: int) -> str:
        if self.weights is None:
            passes, index = divmod(position, len(self.shards))
            return self.shards[self._permutation(passes)[index]]
        draw = random.Random(f"{self.seed}:draw:{position}")
        source = draw.choices(range(len(self.source_sizes)), weights=self.weights)[0]
        return self.shards[sum(self.source_sizes[:source]) + draw.randrange(self.source_sizes[source])]

    @functools.lru_cache(maxsize=2)
    def _permutation(self, passes: int) -> list[int]:
        order = list(range(len(self.shards)))
        random.Random(f"{self.seed}:pass:{passes}").shuffle(order)
        return order


@dataclass
class StreamState:
    """Where one loader worker's stream stands: ``pieces`` to read first (``[position, next ordinal, ordinals or
    None]``: a shard read from that ordinal on, or only the listed ordinals), then dealt local indices ``next``,
    ``next + stride``, ... (from ``origin + worker``); the shuffle ``buffer`` as ``[position, ordinal]``
    references, in buffer order; ``draws`` made from the buffer, seeded with ``name``."""

    next: int
    stride: int
    name: str
    origin: int = 0  # the local index this dealing began at (a re-dealt stream's frontier)
    pieces: list[list] = field(default_factory=list)
    buffer: list[list[int]] = field(default_factory=list)
    draws: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> StreamState:
        return cls(**json.loads(text))


def initial_states(workers: int) -> list[StreamState]:
    return [StreamState(next=w, stride=workers, name=f"{w}/{workers}") for w in range(workers)]


def redeal(states: list[StreamState], workers: int, rank: int, world: int) -> list[StreamState]:
    """The unread parts of ``states`` (one per old worker of process ``rank`` of ``world``) dealt over ``workers``
    new ones: buffers, pieces, and the local indices that a slower old worker had not reached below the furthest
    one any began, round-robin; then each new worker deals on from that frontier with the new stride. Every sample
    not yet handed out stays, once."""
    begun = [s.next - s.stride for s in states if s.next - s.stride >= s.origin]
    frontier = max(begun) + 1 if begun else states[0].origin
    pieces = [piece for s in states for piece in s.pieces]
    for s in states:
        pieces += [[rank + world * index, 0, None] for index in range(s.next, frontier, s.stride)]
    buffer = [ref for s in states for ref in s.buffer]
    tag = f"after {len(states)} at {frontier}"
    return [StreamState(next=frontier + k, stride=workers, name=f"{k}/{workers} {tag}", origin=frontier,
                        pieces=pieces[k::workers], buffer=buffer[k::workers]) for k in range(workers)]


class SourceReader:
    """Reads one entry of the shard sequence: a tar shard (``read_shard``), or a chunk of ``TABLE_CHUNK`` rows of an
    indexed source (``table:<source>:<first row>``, ``table_chunks``) — a COCO captions file or an ALBEF list joining
    a streamed run — whose rows become samples like a shard's (the image file's bytes, the captions).

    Args:
        tables: per table source, its rows (``{"image", "captions"}``), the folder its paths are relative to, and
            the file it was read from (naming its samples).
    """

    def __init__(self, tables: list[tuple[Any, Path, str]] = ()):
        self.tables = list(tables)

    def __call__(self, name: str) -> Iterator[tuple[int, str, dict[str, bytes]]]:
        if not name.startswith(TABLE_PREFIX):
            return read_shard(name)
        _, source, first = name.split(":")
        return self._chunk(*self.tables[int(source)], int(first))

    @staticmethod
    def _chunk(table, root: Path, file: str, first: int) -> Iterator[tuple[int, str, dict[str, bytes]]]:
        rows = table[first:first + TABLE_CHUNK]
        for ordinal, (image, captions) in enumerate(zip(rows["image"], rows["captions"])):
            members = {"json": json.dumps({"image": image, "captions": captions}).encode()}
            try:
                members["jpg"] = (root / image).read_bytes()
            except OSError:  # a missing image: the sample has no image member, counted as such
                pass
            yield ordinal, f"{file}#{first + ordinal}", members


def table_chunks(source: int, rows: int) -> list[str]:
    """The sequence entries of table source ``source`` of ``rows`` rows: one per ``TABLE_CHUNK`` rows."""
    return [f"{TABLE_PREFIX}{source}:{first}" for first in range(0, rows, TABLE_CHUNK)]


def read_shard(url: str) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """(ordinal, key, {extension: bytes}) per sample of a shard, read as a stream (a sample's members are adjacent
    in the tar, as WebDataset writes them); ordinals count every sample, readable or not."""
    import webdataset

    with webdataset.gopen(url, "rb") as opened:
        stream = _TailKeeper(opened)
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            ordinal, current, members = 0, None, {}
            for member in tar:
                if not member.isfile():
                    continue
                key, _, extension = Path(member.name).name.partition(".")
                key = str(Path(member.name).parent / key) if "/" in member.name else key
                if key != current and members:
                    yield ordinal, current, members
                    ordinal, members = ordinal + 1, {}
                current = key
                members[extension.lower()] = tar.extractfile(member).read()
        stream.drain()
        if not stream.ended_properly():
            # tarfile ends quietly at a header cut short: a download cut between members would lose its rest unseen.
            raise tarfile.ReadError("the shard stops without tar's end-of-archive blocks (cut short?)")
        if members:
            yield ordinal, current, members


class _TailKeeper:
    """A read-only stream that remembers its last ``END_BYTES`` bytes: a complete tar ends in zero blocks (the
    end-of-archive marker and padding), one cut short almost never does."""

    END_BYTES = 1024

    def __init__(self, stream):
        self.stream, self.tail = stream, b""

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.tail = (self.tail + data)[-self.END_BYTES:]
        return data

    def drain(self) -> None:
        while self.read(1 << 16):
            pass

    def ended_properly(self) -> bool:
        return len(self.tail) == self.END_BYTES and not self.tail.strip(b"\0")


class WorkerStream:
    """One loader worker's samples: ``(position, ordinal, key, members)`` from the shuffle buffer, with ``state``
    (a ``StreamState``) kept current; unreadable shards are skipped and counted in ``skipped``."""

    def __init__(self, sequence: ShardSequence, state: StreamState, rank: int, world: int, buffer_size: int,
                 on_bad_sample: str, seed: int, read: Callable[[str], Iterator] = read_shard):
        self.sequence, self.state, self.rank, self.world = sequence, state, rank, world
        self.buffer_size, self.on_bad_sample, self.seed, self.read = buffer_size, on_bad_sample, seed, read
        self.skipped: Counter = Counter()
        self._items: list[tuple] = []  # the buffer's samples, in the order of state.buffer

    def __iter__(self) -> Iterator[tuple[int, int, str, dict[str, bytes]]]:
        self._refill()
        incoming = self._read()
        while True:
            while len(self._items) < self.buffer_size:
                item = next(incoming)
                self._items.append(item)
                self.state.buffer.append([item[0], item[1]])
            pick = random.Random(f"{self.seed}:{self.rank}:{self.state.name}:{self.state.draws}")
            index = pick.randrange(len(self._items))
            self.state.draws += 1
            for kept in (self._items, self.state.buffer):  # swap with the last, then drop it
                kept[index], kept[-1] = kept[-1], kept[index]
            self.state.buffer.pop()
            yield self._items.pop()

    def _refill(self) -> None:
        """The buffer's samples, re-read from their shards (a resumed or re-dealt stream)."""
        wanted: dict[int, set[int]] = {}
        for position, ordinal in self.state.buffer:
            wanted.setdefault(position, set()).add(ordinal)
        found = {}
        for position, ordinals in wanted.items():
            for item in self._read_piece([position, 0, sorted(ordinals)]):
                found[item[0], item[1]] = item
        self._items = [found[position, ordinal] for position, ordinal in self.state.buffer if (position, ordinal)
                       in found]
        self.state.buffer = [[item[0], item[1]] for item in self._items]

    def _read(self) -> Iterator[tuple]:
        empty = 0
        while True:
            if not self.state.pieces:
                self.state.pieces.append([self.rank + self.world * self.state.next, 0, None])
                self.state.next += self.state.stride
            read = 0
            for item in self._read_piece(self.state.pieces[0]):
                read += 1
                yield item
            self.state.pieces.pop(0)
            empty = 0 if read else empty + 1
            if empty >= MAX_EMPTY_SHARDS:
                raise DataError(f"{MAX_EMPTY_SHARDS} shards in a row gave no sample (the last: "
                                f"{self.sequence.shard(self._position_of_last)}): check data.pretrain_files, the "
                                f"pipe: command and the shards (skipped so far: {dict(self.skipped)}).")

    def _read_piece(self, piece: list) -> Iterator[tuple]:
        """The samples of one piece, advancing ``piece[1]`` past each (so the state says where reading stands)."""
        position, start, only = piece
        self._position_of_last = position
        url = self.sequence.shard(position)
        remaining = set(only) if only is not None else None
        try:
            for ordinal, key, members in self.read(url):
                if ordinal < start or (remaining is not None and ordinal not in remaining):
                    continue
                piece[1] = ordinal + 1
                yield position, ordinal, f"{url}/{key}", members
                if remaining is not None:
                    remaining.discard(ordinal)
                    if not remaining:
                        return
        except (OSError, tarfile.TarError, ValueError) as error:  # what gopen, pipes and tarfile raise
            if self.on_bad_sample == "error":
                raise DataError(f"{url}: the shard could not be read ({type(error).__name__}: {error}). Fix or "
                                f"re-download it, or set data.on_bad_sample=skip to skip such shards.") from None
            self.skipped["unreadable shard"] += 1
            logger.warning("skipping the rest of shard %s: %s: %s", url, type(error).__name__, str(error)[:200])


class StreamDataset(IterableDataset):
    """Collated pretraining batches from a ``ShardSequence``: each worker streams its dealt shards through its
    shuffle buffer, makes TCL's two views and caption of each sample, and yields batches of ``batch_size`` with
    ``stream`` (``{"worker", "state"}`` after this batch), ``sample_keys`` and ``skipped``.

    ``states`` (set by ``StreamLoader`` before the workers start): one per worker, ``first``: the worker whose
    batch comes first (physical worker ``k`` plays worker ``(first + k) mod W``).
    """

    def __init__(self, sequence: ShardSequence, collate: PretrainCollator, transform: Callable,
                 aug_transform: Callable, batch_size: int, rank: int, world: int, buffer_size: int,
                 reading: SampleReading, reader: SourceReader | None = None):
        self.sequence, self.collate, self.reader = sequence, collate, reader or SourceReader()
        self.transform, self.aug_transform = transform, aug_transform
        self.decode_size = chains_decode_size(transform, aug_transform)  # large JPEGs decoded at a reduced scale
        self.batch_size, self.rank, self.world, self.buffer_size = batch_size, rank, world, buffer_size
        self.reading = reading
        self.skipped_at_indexing: Counter = Counter()  # nothing is indexed
        self.states: list[StreamState] = initial_states(1)
        self.first = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        physical, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if len(self.states) != workers:
            raise TclError(f"the stream holds states of {len(self.states)} workers, the loader runs {workers}")
        worker = (self.first + physical) % workers
        stream = WorkerStream(self.sequence, self.states[worker], self.rank, self.world, self.buffer_size,
                              self.reading.on_bad_sample, self.reading.seed, self.reader)
        samples, keys = [], []
        for position, ordinal, key, members in stream:
            sample = self._sample(position, ordinal, key, members, stream.skipped)
            if sample is None:
                continue
            samples.append(sample)
            keys.append(key)
            if len(samples) == self.batch_size:
                batch = self.collate(samples)
                batch.update(skipped=dict(stream.skipped), sample_keys=keys,
                             stream={"worker": worker, "state": stream.state.to_json()})
                stream.skipped.clear()
                samples, keys = [], []
                yield batch

    def _sample(self, position: int, ordinal: int, key: str, members: dict[str, bytes], skipped: Counter
                ) -> dict[str, Any] | None:
        try:
            with seeded_sample(self.reading.seed, f"stream:{position}:{ordinal}"):
                return self._views(key, members)
        except BadSampleError as error:
            if self.reading.on_bad_sample == "error":
                raise BadSampleError(f"{key}: {error} (set data.on_bad_sample=skip to skip and count such samples)",
                                     error.reason) from None
            skipped[error.reason] += 1
            warn_skip(key, error)
            return None

    def _views(self, key: str, members: dict[str, bytes]) -> dict[str, Any]:
        image = image_member(members)
        if image is None:
            raise BadSampleError(f"no image member ({', '.join(sorted(members))})", "missing image")
        meta = sample_meta(members.get("json"))
        name = str(meta.get("image") or key)
        caption = draw_caption(sample_captions(meta, members.get("txt")), self.reading.max_words, name)
        picture = as_rgb_image(image, self.reading.max_image_pixels, decode_size=self.decode_size)
        return {"image": self.transform(picture), "image_aug": self.aug_transform(picture), "caption": caption}


class StreamLoader:
    """Batches of a ``StreamDataset`` through one DataLoader kept for the whole run (its workers stream on across
    epochs), ``batches_per_epoch`` per epoch (``epoch_samples`` cut to whole optimizer steps of all processes);
    remembers each worker's state for checkpoints.

    It offers what the trainer asks of a loader's sampler (``set_epoch``, ``batches_per_epoch``) itself."""

    def __init__(self, dataset: StreamDataset, num_workers: int, epoch_samples: int, seed: int,
                 grad_accum_steps: int = 1):
        self.dataset, self.num_workers, self.seed = dataset, num_workers, seed
        self.epoch_samples = epoch_samples
        # Whole optimizer steps: the trainer would otherwise draw (and drop) a remainder of micro-batches.
        steps = epoch_samples // (dataset.batch_size * dataset.world * grad_accum_steps)
        self._batches_per_epoch = steps * grad_accum_steps
        self.workers = max(num_workers, 1)
        self.states = initial_states(self.workers)
        self.consumed = 0  # batches handed on since the run began (before a resume too)
        self._iterator = None
        self._remaining = self._batches_per_epoch

    @property
    def sampler(self) -> StreamLoader:
        return self

    def batches_per_epoch(self) -> int:
        return self._batches_per_epoch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self._remaining = self._batches_per_epoch - start_batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._iterator is None:
            self.dataset.states, self.dataset.first = self.states, self.consumed % self.workers
            self._iterator = iter(DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                                             pin_memory=torch.cuda.is_available(),
                                             generator=torch.Generator().manual_seed(self.seed)))
        for _ in range(self._remaining):
            batch = next(self._iterator)
            stream = batch.pop("stream")
            self.states[stream["worker"]] = StreamState.from_json(stream["state"])
            self.consumed += 1
            yield batch
        self._remaining = 0

    def state_dict(self) -> dict[str, Any]:
        return {"rank": self.dataset.rank, "processes": self.dataset.world, "consumed": self.consumed,
                "states": [asdict(state) for state in self.states]}

    def load_state_dict(self, saved: dict[str, Any], where: str) -> None:
        """Continues from ``saved`` (``state_dict`` of a checkpoint, named by ``where``): exactly with as many
        workers, with the unread samples dealt afresh otherwise; another number of processes is refused."""
        if saved["processes"] != self.dataset.world:
            raise TclError(f"{where}: a streamed run keeps its position in the shards per process; it was written "
                           f"by {saved['processes']} processes and this launch has {self.dataset.world}. Resume it "
                           f"with accelerate launch --num_processes {saved['processes']}.")
        states = [StreamState(**state) for state in saved["states"]]
        self.consumed = saved["consumed"]
        if len(states) == self.workers:
            self.states = states
            return
        # The old workers' turn order no longer exists: start the new ones from worker 0.
        order = self.consumed % len(states)
        self.states = redeal(states[order:] + states[:order], self.workers, self.dataset.rank, self.dataset.world)
        self.consumed = 0
        logger.info("resuming a stream of %d loader workers on %d: the samples left in this epoch are dealt afresh "
                    "(each still read once, in another order)", len(states), self.workers)
