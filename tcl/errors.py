"""Exceptions that carry a message a user can act on.

Every error the project raises on purpose says what was wrong, where (file, line, key or sample), and what to do.
Command-line entry points print these messages without a traceback unless ``--debug`` is given.
"""

import logging


class TclError(Exception):
    """Base class of the errors that are the user's to fix (bad config, bad data, bad checkpoint)."""


class ConfigError(TclError):
    """An invalid configuration: unknown key, wrong type, impossible combination of values."""


class DataError(TclError):
    """Input data that cannot be used: malformed annotation files, inconsistent ids, missing files."""


class BadSampleError(DataError):
    """One sample cannot be loaded (missing, empty or corrupt image; empty text).

    Datasets either skip and count such samples or re-raise, according to ``data.on_bad_sample``.
    """

    def __init__(self, message: str, reason: str = "bad sample"):
        super().__init__(message)
        self.reason = reason


class _DropExpected(logging.Filter):
    """Drops accelerate's warning about tied weights when saving: the MLM decoder shares the word embeddings by
    design, and every checkpoint would otherwise print it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


def quiet_library_logs() -> None:
    """Our INFO lines stay; the libraries' (accelerate's six lines about every checkpoint folder, for one) are
    shown from WARNING up."""
    for name in ("accelerate", "torch.distributed", "datasets", "filelock", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("accelerate.utils.other").addFilter(_DropExpected())


def run_command(function, args, debug: bool) -> int:
    """Runs a command-line entry point: user errors become one ``error: ...`` line and exit code 2 (the traceback
    only with ``--debug``); Ctrl-C exits with 130."""
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_library_logs()
    try:
        return function(args)
    except TclError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
