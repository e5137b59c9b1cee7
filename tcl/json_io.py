"""Reading annotation JSON with errors that point at the file, line and column (or byte, when streamed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import ijson

from tcl.errors import DataError


def load_json(path: str | Path) -> Any:
    """Parses a JSON file.

    Raises:
        DataError: the file is missing, or not valid JSON (message names file:line:column and the problem).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found. Check data.root and the file name "
                        f"(run `tcl make-data` for the embedded dataset).")
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}:{error.colno}: malformed JSON ({error.msg}, at character "
                        f"{error.pos}). The file is damaged or was only partly written: re-download or "
                        f"re-generate it.") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text at byte {error.start} ({error.reason}). "
                        f"Is this really a JSON annotation file?") from None


_JSON_KINDS = {"start_map": "an object", "string": "a string", "number": "a number", "boolean": "a boolean",
               "null": "null"}


def stream_json_list(path: str | Path) -> Iterator[Any]:
    """The entries of a JSON list file, one at a time, parsed as the file is read (ijson's C parser): a list of
    millions of entries never sits in memory whole. Numbers come as ``int`` or ``float``.

    Raises:
        DataError: the file is missing, is not a JSON list, or is malformed (the message names the byte offset).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found. Check data.root and the file name.")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; re-download or re-generate it.")
    with open(path, "rb") as handle:
        try:
            first = next(ijson.parse(handle), None)
            if first is None or first[1] != "start_array":
                found = "nothing" if first is None else _JSON_KINDS.get(first[1], first[1])
                raise DataError(f"{path}: expected a JSON list of entries, found {found} at the top.")
            handle.seek(0)
            yield from ijson.items(handle, "item", use_float=True)
        except ijson.JSONError as error:
            problem = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DataError(f"{path}: malformed JSON near byte {handle.tell()} ({problem}). The file is damaged or "
                            f"was only partly written: re-download or re-generate it.") from None
