"""Every repository path the docs and the code name exists: moved files leave no stale references behind; every
section of docs/BENCHMARKS.md they quote by name is one of its headings.

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


# A reference to a section of the benchmarks page: ``docs/BENCHMARKS.md, "Region classification"``, ``[BENCHMARKS]
# (docs/BENCHMARKS.md), "A" and "B"``, or a quote broken over comment lines or adjacent Python string literals.
BENCHMARKS_MENTION = re.compile(r"BENCHMARKS(?:\.md)?(?:\]\([^)\s]*\))?")
BENCHMARKS_ANCHOR = re.compile(r"BENCHMARKS\.md#([\w\-]+)")
QUOTE_GAP = re.compile(r"""(?:,|\s|#(?=\s)|"\s*\n\s*[rf]?"|and(?=\s))*""")
QUOTED = re.compile(r"""(["'])(?=[\w`])((?:(?!\1)[^\n]|\n(?!\s*\n))+?)\1""")  # a heading starts with a word
LINE_BREAK = re.compile(r"\s*\n\s*(?:#\s*)?")


def benchmark_referrers(repo: Path) -> list[Path]:
    """The README, the docs, the library's code and configs, the scripts, the benchmarks and the research code."""
    suffixes = {".py", ".sh", ".md", ".yaml", ".txt"}
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md")), *sorted((repo / "tcl").rglob("*.py")),
            *sorted((repo / "tcl" / "configs").rglob("*.yaml")), *sorted((repo / "benchmarks").glob("*.py")),
            *(path for folder in ("scripts", "research") for path in sorted((repo / folder).rglob("*"))
              if path.suffix in suffixes)]


def benchmark_headings(repo: Path) -> list[str]:
    """The headings of docs/BENCHMARKS.md without their ``#`` marks."""
    text = (repo / "docs" / "BENCHMARKS.md").read_text()
    return [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def quoted_sections(text: str, start: int):
    """``(offset, section)`` for each quoted name that follows a mention of the benchmarks page at ``start``."""
    position = start
    while True:
        position = QUOTE_GAP.match(text, position).end()
        quote = QUOTED.match(text, position)
        if quote is None or len(quote.group(2)) > 200:
            return
        yield quote.start(), LINE_BREAK.sub(" ", quote.group(2)).strip()
        position = quote.end()


def stale_benchmark_sections(repo: Path) -> list[str]:
    """``file:line: "section"`` for every quoted section (or ``#anchor``) of docs/BENCHMARKS.md that no heading of it
    starts with (ignoring case)."""
    headings = [heading.lower() for heading in benchmark_headings(repo)]
    anchors = {github_anchor(heading) for heading in headings}
    stale = []
    for document in benchmark_referrers(repo):
        if not document.is_file():
            continue
        text = document.read_text(errors="replace")
        where = lambda offset: f"{document.relative_to(repo)}:{text.count(chr(10), 0, offset) + 1}"
        for mention in BENCHMARKS_MENTION.finditer(text):
            for offset, section in quoted_sections(text, mention.end()):
                if not any(heading.startswith(section.lower()) for heading in headings):
                    stale.append(f'{where(offset)}: "{section}"')
        for anchor in BENCHMARKS_ANCHOR.finditer(text):
            if anchor.group(1) not in anchors:
                stale.append(f"{where(anchor.start())}: #{anchor.group(1)}")
    return stale


def test_every_quoted_benchmarks_section_is_a_heading():
    assert stale_benchmark_sections(REPO) == []


def test_a_renamed_benchmarks_heading_is_caught_where_it_is_still_quoted(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "BENCHMARKS.md").write_text("# Benchmarks\n\n## Speed\n\n### Region classification: shapes "
                                                     "(2026-12-04)\n\n### The demo's minutes (2026-12-07)\n")
    (tmp_path / "README.md").write_text('Measured: [BENCHMARKS](docs/BENCHMARKS.md), "Region classification" and\n'
                                        '"The demo\'s\nhours"; [speed](docs/BENCHMARKS.md#speed), '
                                        "[gone](docs/BENCHMARKS.md#today).\n")
    (tmp_path / "tcl" / "configs").mkdir(parents=True)
    (tmp_path / "tcl" / "config.py").write_text('WHY = ("measured (docs/BENCHMARKS.md, "\n'
                                                '       "\'A third kind of machine\'); removed")\n')
    (tmp_path / "tcl" / "configs" / "tiny.yaml").write_text('  # cheaper (docs/BENCHMARKS.md, "The demo\'s\n'
                                                            '  # minutes").\nlr: 1.0e-3\n')
    assert stale_benchmark_sections(tmp_path) == ['README.md:2: "The demo\'s hours"', "README.md:3: #today",
                                                  'tcl/config.py:2: "A third kind of machine"']
