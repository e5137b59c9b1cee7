"""The one way this package writes a file: all of it or none of it, durable, with the user's usual permissions.

Every writer (weights, configs, answer lists, results, indexes, generated annotations, checkpoint pointers) writes
to a temporary name beside the destination, flushes it to disk, gives it the permissions a plain ``open`` would
(``0666`` minus the umask: a temporary file from ``mkstemp`` would stay ``0600``) and renames it over the
destination, so that a reader, a crash or a full disk never leaves a half-written file under the real name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` to write; on success it becomes ``path``, on any error it is removed.

    Example::

        with atomic_write(folder / "model.safetensors") as temporary:
            save_file(state, str(temporary))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        _fsync(temporary)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
        _fsync(path.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_write(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json_atomic(payload: Any, path: str | Path, indent: int | None = None) -> None:
    """``payload`` as JSON (UTF-8, non-ASCII kept) at ``path``, atomically."""
    write_text_atomic(path, json.dumps(payload, ensure_ascii=False, indent=indent))


def _fsync(path: Path) -> None:
    """Flushes a file's (or a folder's entries') data to disk; folders that refuse it (some filesystems) are fine."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(descriptor)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask
