"""Every repository path the docs and the code name exists: moved files leave no stale references behind.

A path is a token starting with one of the repository's top folders (``tcl/``, ``scripts/``, ``benchmarks/``,
``docs/``, ``tests/``, ``configs/``, ``.ci/``); a glob (``scripts/bench_*.py``) or a path cut short by a brace or a
placeholder (``world1_{a,b}.json``, ``results/<run>``) must match something; a path given to ``--json``/``--out`` or
as a default output is what a command writes, not a reference, and is left out, as is a path git ignores (what runs
write) and this file's own examples."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATH = re.compile(r"(?<![\w/.\-~$])((?:tcl|scripts|benchmarks|docs|tests|configs|\.ci)/[\w./\-*]*[\w/*])")
# What comes right before an output path: the command will write it.
OUTPUT_MARKERS = ("--json ", "--out ", 'default=Path("', "default: ")


def documents(repo: Path) -> list[Path]:
    """The README, the docs and every source file of the library, its scripts, benchmarks and tests."""
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md")),
            *(path for folder in ("tcl", "scripts", "benchmarks", "tests") for pattern in ("*.py", "*.sh")
              for path in sorted((repo / folder).rglob(pattern)) if path.resolve() != Path(__file__).resolve())]


def stale_paths(repo: Path) -> list[str]:
    """``file:line: path`` for every named path that does not exist in ``repo``."""
    stale = []
    for document in documents(repo):
        for number, line in enumerate(document.read_text(errors="replace").splitlines(), start=1):
            for match in PATH.finditer(line):
                path = match.group(1).rstrip(".")
                if line[:match.start()].endswith(OUTPUT_MARKERS):
                    continue
                if line[match.end():match.end() + 1] in ("{", "<"):
                    path += "*"
                found = any(repo.glob(path)) if "*" in path else (repo / path).exists()
                if not found and not ignored_by_git(repo, path):
                    stale.append(f"{document.relative_to(repo)}:{number}: {path}")
    return stale


def ignored_by_git(repo: Path, path: str) -> bool:
    """Whether git ignores ``path`` in ``repo``: what a run writes there (``tests/artifacts/``, ``runs/``), which a
    fresh clone does not hold yet."""
    result = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", "--no-index", path], capture_output=True)
    return result.returncode == 0


def test_every_path_the_docs_and_the_code_name_exists():
    assert stale_paths(REPO) == []


def test_a_moved_file_is_caught_where_it_is_still_named(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "bench_startup.py").write_text("")
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("Run `python scripts/bench_startup.py`; results in docs/RESULTS.md.\n")
    (tmp_path / "docs" / "NOTES.md").write_text("See benchmarks/bench_startup.py and scripts/probe_*.py.\n"
                                                "python scripts/bench_startup.py --json benchmarks/out.json\n")
    assert stale_paths(tmp_path) == ["README.md:1: docs/RESULTS.md", "docs/NOTES.md:1: benchmarks/bench_startup.py",
                                     "docs/NOTES.md:1: scripts/probe_*.py"]
