"""Arrow indexes of annotation files, memory-mapped so DataLoader workers share them instead of copying.

Real annotation files hold millions of rows. Kept as Python lists, every DataLoader worker would get its own copy of
them (and copy-on-access through reference counts). Instead each source is converted once into an Arrow file with
the ``datasets`` library and opened memory-mapped; a pickled ``datasets.Dataset`` of a file travels to workers as
its path. Indexes are cached under a key made from the source files' paths, sizes and modification times, so a
changed source is re-indexed automatically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

import datasets
from datasets.arrow_writer import ArrowWriter
from filelock import FileLock, Timeout

from tcl.atomic import atomic_write, write_json_atomic

logger = logging.getLogger(__name__)

# Bump when the row layout of an index changes, so old caches are not reused.
INDEX_VERSION = 1
# How often a process waiting for another's index build says so, and how often a build reports its rows.
WAIT_MESSAGE_S = 30
PROGRESS_ROWS = 1_000_000


def default_cache_dir() -> Path:
    return Path(os.environ.get("TCL_CACHE", Path.home() / ".cache" / "tcl")) / "index"


def source_key(paths: Iterable[str | Path], extra: str = "") -> str:
    """A key that changes whenever one of ``paths`` (files or directories) changes."""
    digest = hashlib.sha256(f"v{INDEX_VERSION}|{extra}".encode())
    for path in paths:
        path = Path(path).resolve()
        stat = path.stat() if path.exists() else None
        digest.update(f"|{path}|{stat.st_size if stat else -1}|{stat.st_mtime_ns if stat else -1}".encode())
    return digest.hexdigest()[:20]


def cached_index(name: str, key: str, features: datasets.Features,
                 build_rows: Callable[[Counter], Iterable[dict]], cache_dir: str | Path | None = None
                 ) -> tuple[datasets.Dataset, Counter]:
    """Returns the memory-mapped index ``name``/``key``, building it with ``build_rows`` if absent.

    ``build_rows`` receives a Counter in which it counts the rows it left out, by reason; the counts are stored with
    the index and returned on every load so that skipped rows are always reported.
    Concurrent processes (``accelerate launch``) wait on a file lock while one of them builds the index, saying so
    every ``WAIT_MESSAGE_S`` seconds; the builder logs its progress every ``PROGRESS_ROWS`` rows.
    """
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    arrow_path = folder / f"{name}-{key}.arrow"
    report_path = folder / f"{name}-{key}.skipped.json"
    with _wait_for(FileLock(str(folder / f"{name}-{key}.lock")), f"the {name} index {arrow_path}"):
        if not arrow_path.exists():
            skipped: Counter = Counter()
            _write_arrow(arrow_path, features, _counted(build_rows(skipped), f"{name} index"))
            write_json_atomic(dict(skipped), report_path)
    table = datasets.Dataset.from_file(str(arrow_path))
    skipped = Counter(json.loads(report_path.read_text())) if report_path.exists() else Counter()
    return table, skipped


@contextmanager
def _wait_for(lock: FileLock, what: str) -> Iterator[None]:
    """Holds ``lock``; while another process holds it, says every ``WAIT_MESSAGE_S`` seconds that this one waits."""
    waited = 0
    while True:
        try:
            lock.acquire(timeout=WAIT_MESSAGE_S)
            break
        except Timeout:
            waited += WAIT_MESSAGE_S
            logger.info("waiting %d s for another process building %s", waited, what)
    try:
        yield
    finally:
        lock.release()


def _counted(rows: Iterable[dict], what: str) -> Iterator[dict]:
    count = 0
    for count, row in enumerate(rows, 1):
        if count % PROGRESS_ROWS == 0:
            logger.info("%s: %d rows so far", what, count)
        yield row
    if count >= PROGRESS_ROWS:
        logger.info("%s: %d rows", what, count)


def _write_arrow(path: Path, features: datasets.Features, rows: Iterable[dict]) -> None:
    """Streams rows into an Arrow file; written under a temporary name and renamed, so readers never see half."""
    with atomic_write(path) as temporary:
        writer = ArrowWriter(features=features, path=str(temporary))
        try:
            for row in rows:
                writer.write(row)
            writer.finalize()
        finally:
            writer.close()
