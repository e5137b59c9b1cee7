"""Reading annotation JSON with errors that point at the file, line and column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
