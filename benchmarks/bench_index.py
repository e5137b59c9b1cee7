"""Indexing a huge ALBEF pretraining list: time and peak memory of the streamed index build, against ``json.load``.

    python benchmarks/bench_index.py --entries 14000000 --json benchmarks/results/bench_index.json
    python benchmarks/bench_index.py --entries 1000000 --compare-json-load      # the old way too, side by side

Writes a list of ``--entries`` entries (``{"image": "cc12m/00123/001234567.jpg", "caption": "..."}``, captions of 8
to 20 words: about 100 bytes an entry, as CC12M's list) to a temporary folder, then builds the project's index of it
(``tcl.data.image_text.albef_json_table``: ijson's streaming parser into a memory-mapped Arrow file) in a fresh
process and reports its wall time, its peak resident memory and its peak anonymous memory (sampled; the resident
figure also counts the pages of the memory-mapped index it opens at the end, which the page cache holds and every
worker shares). ``--compare-json-load`` also times, in another fresh
process, what the index build did before: ``json.load`` of the whole list. The list and the index are deleted at the
end (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = ("a man woman dog cat red blue green small large table street car tree sitting standing on in near with "
         "the of two three white black holding riding plate food water field building sky photo view old new").split()

# Each measured process samples its anonymous memory (RssAnon: what it allocated, not the pages of files it maps,
# such as the memory-mapped index that DataLoader workers share) every 20 ms; ru_maxrss counts both.
SAMPLER = """
import re, resource, sys, threading, time
peak = [0]
def sample():
    while True:
        text = open("/proc/self/status").read()
        peak[0] = max(peak[0], int(re.search(r"RssAnon:\\s+(\\d+)", text).group(1)))
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
def report(rows, start):
    time.sleep(0.05)
    print(rows, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, peak[0] / 1024)
"""
STREAMED = SAMPLER + """
from tcl.data.image_text import albef_json_table
start = time.perf_counter()
table, skipped = albef_json_table([sys.argv[1]], "skip", cache_dir=sys.argv[2])
report(len(table), start)
"""
JSON_LOAD = SAMPLER + """
import json
start = time.perf_counter()
entries = json.load(open(sys.argv[1], "rb"))
report(len(entries), start)
"""


def write_list(path: Path, entries: int, seed: int = 0) -> None:
    """The list, written entry by entry (this script never holds it either)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("[")
        for index in range(entries):
            caption = " ".join(rng.choices(WORDS, k=rng.randint(8, 20)))
            handle.write(("," if index else "") + json.dumps(
                {"image": f"cc12m/{index // 10000:05d}/{index:09d}.jpg", "caption": caption}))
        handle.write("]")


def measure(code: str, *args: str) -> dict:
    """Runs ``code`` in a fresh Python: rows, seconds, peak resident MB and peak anonymous MB it prints."""
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    rows, seconds, peak, anonymous = result.stdout.split()
    return {"rows": int(rows), "seconds": float(seconds), "peak_rss_mb": float(peak),
            "peak_anonymous_mb": float(anonymous)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--compare-json-load", action="store_true")
    parser.add_argument("--folder", default=None, help="where the list goes (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the list and the index")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="bench_index_"))
    folder.mkdir(parents=True, exist_ok=True)
    listing = folder / "pairs.json"
    try:
        start = time.perf_counter()
        write_list(listing, args.entries)
        result = {"entries": args.entries, "list_mb": listing.stat().st_size / 2 ** 20,
                  "write_s": time.perf_counter() - start, "date": time.strftime("%Y-%m-%d"),
                  "command": " ".join(["python benchmarks/bench_index.py", *(argv or sys.argv[1:])])}
        result["streamed_index"] = measure(STREAMED, str(listing), str(folder / "cache"))
        if args.compare_json_load:
            result["json_load"] = measure(JSON_LOAD, str(listing))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
