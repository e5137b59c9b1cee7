"""``tcl predict``: answers from the command line, one question or a JSON-lines batch.

    tcl predict --model runs/demo/model --image img.jpg --question "what color is the circle?" [--top-k 5]
    tcl predict --model runs/demo/model --input questions.jsonl --output answers.jsonl [--workers 4]

A batch line is ``{"image": PATH, "question": TEXT}`` (any other fields, e.g. ``"id"``, are copied to the answer);
relative image paths are looked up beside the input file first, then in the current folder. Every input line gets
one output line, in order: ``{..., "answers": [{"answer", "score"}, ...]}``, or ``{..., "error": MESSAGE}`` when the
line cannot be answered (bad JSON, missing field, empty question, missing or unreadable image) — the rest goes on.
Exit code 0 when every line was answered, 1 when some failed, 2 for a usage error (no model, no input file).

Batch mode reads and checks every line first, then decodes each distinct image once, in ``--workers`` loader
processes, and answers all the questions of an image with one pass of the image encoder: a forward pass holds whole
images and their questions (up to ``--batch-size`` questions; an image with more questions than that is split over
passes, and encoded once per pass). Answers are written in the input's order as soon as all earlier lines have theirs.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tcl.errors import TclError


def run(args: argparse.Namespace) -> int:
    single = args.image is not None or args.question is not None
    if single == (args.input is not None):
        raise TclError("give either --image and --question (one question) or --input FILE.jsonl (batch mode).")
    if single and (args.image is None or args.question is None):
        raise TclError("one question needs both --image and --question.")
    if args.top_k < 1:
        raise TclError(f"--top-k must be at least 1, got {args.top_k}.")
    if args.batch_size < 1:
        raise TclError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.workers is not None and args.workers < 0:
        raise TclError(f"--workers must be 0 (decode in this process) or more, got {args.workers}.")
    if args.input is not None and not Path(args.input).is_file():
        raise TclError(f"{args.input}: input file not found.")
    from tcl.inference import load_vqa

    pipeline = load_vqa(args.model, args.device, args.precision)
    if single:
        return _answer_one(pipeline, args)
    return _answer_batch(pipeline, args)


def _answer_one(pipeline, args) -> int:
    from tcl.errors import BadSampleError

    try:
        answers = pipeline(args.image, args.question, top_k=args.top_k)
    except (BadSampleError, ValueError) as error:
        raise TclError(str(error)) from None
    print(json.dumps({"image": args.image, "question": args.question, "answers": answers}, ensure_ascii=False))
    return 0


def default_workers() -> int:
    """Loader processes for batch mode: the CPUs this process may use, at most 4."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cpus)


@dataclass
class _Line:
    number: int
    record: dict[str, Any] = field(default_factory=dict)
    image_path: Path | None = None
    question: str = ""
    error: str | None = None


def _answer_batch(pipeline, args) -> int:
    from tqdm.auto import tqdm

    lines = list(_read_lines(Path(args.input), pipeline.processor))
    workers = default_workers() if args.workers is None else args.workers
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        with tqdm(total=len(lines), desc="predict", unit="question", disable=args.output is None) as bar:
            writer = _InOrderWriter(lines, out, bar)
            writer.done(line for line in lines if line.error is not None)
            for answered in _answer_by_image(pipeline, lines, args.batch_size, args.top_k, workers):
                writer.done(answered)
    finally:
        if out is not sys.stdout:
            out.close()
    failed = sum(line.error is not None for line in lines)
    print(f"answered {len(lines) - failed} of {len(lines)} lines; {failed} failed" + (f" (see {args.output})" if
          failed and args.output else ""), file=sys.stderr)
    return 1 if failed else 0


def _read_lines(path: Path, processor) -> Iterator[_Line]:
    """Each input line, parsed and checked (its image is only located, decoded later), or with the error that stops
    it. Lines are decoded one by one, so a line that is not UTF-8 is its own error record (a UTF-8 byte-order mark at
    the start is allowed)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                line = _Line(number)
                line.error = (f"line {number}: not UTF-8 (byte 0x{raw[error.start]:02x} at byte {error.start + 1}); "
                              "save the file as UTF-8")
                yield line
                continue
            yield _parse_line(number, text, path.parent, processor)


def _parse_line(number: int, text: str, base: Path, processor) -> _Line:
    line = _Line(number)
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        line.error = f"line {number}: invalid JSON ({error.msg} at column {error.colno})"
        return line
    if not isinstance(record, dict):
        line.error = f"line {number}: expected a JSON object with \"image\" and \"question\""
        return line
    try:  # JSON may spell lone UTF-16 surrogates ("\\ud800"), which are no text: refuse them (and do not echo them)
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        line.error = f"line {number}: the line holds an unpaired surrogate escape (such as \\ud800), which is not text"
        return line
    line.record = record
    image, question = record.get("image"), record.get("question")
    if not isinstance(image, str) or not image:
        line.error = f"line {number}: missing \"image\" (a path)"
    elif not isinstance(question, str) or not question.strip():
        line.error = f"line {number}: missing or empty \"question\""
    if line.error:
        return line
    try:
        processor.questions(question)  # an empty question after normalisation fails here, for this line only
    except ValueError as error:
        line.error = f"line {number}: {error}"
        return line
    line.image_path, line.question = _locate(image, base), question
    return line


def _locate(image: str, base: Path) -> Path:
    path = Path(image)
    if not path.is_absolute() and (base / path).exists():
        return base / path
    return path


class _ImageFiles(torch.utils.data.Dataset):
    """The distinct images of the input, prepared by the processor: (index, image or None, error or None)."""

    def __init__(self, paths: list[Path], processor):
        self.paths, self.processor = paths, processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        from tcl.errors import BadSampleError

        try:
            return index, self.processor.images(self.paths[index])[0], None
        except (BadSampleError, ValueError) as error:
            return index, None, str(error)


def _one_item(item):
    return item


def _answer_by_image(pipeline, lines: list[_Line], batch_size: int, top_k: int, workers: int
                     ) -> Iterator[list[_Line]]:
    """Answers the lines without an error, each image decoded and encoded once for all its questions; yields the
    lines of each forward pass (and of each image that could not be read) as they are done."""
    groups: dict[str, list[_Line]] = {}
    for line in lines:
        if line.error is None:  # the same file named two ways (img.jpg, ./img.jpg) is one image
            groups.setdefault(os.path.realpath(line.image_path), []).append(line)
    if not groups:
        return
    grouped = list(groups.values())
    files = _ImageFiles([group[0].image_path for group in grouped], pipeline.processor)
    loader = torch.utils.data.DataLoader(files, batch_size=None, num_workers=min(workers, len(files)),
                                         collate_fn=_one_item)
    images: list[torch.Tensor] = []
    batch: list[_Line] = []
    image_index: list[int] = []
    for index, image, error in loader:
        if error is not None:
            for line in grouped[index]:
                line.error = f"line {line.number}: {error}"
            yield grouped[index]
            continue
        for start in range(0, len(grouped[index]), batch_size):
            questions = grouped[index][start:start + batch_size]
            if len(batch) + len(questions) > batch_size:
                yield _answer(pipeline, images, batch, image_index, top_k)
                images, batch, image_index = [], [], []
            images.append(image)
            batch += questions
            image_index += [len(images) - 1] * len(questions)
    if batch:
        yield _answer(pipeline, images, batch, image_index, top_k)


def _answer(pipeline, images: list[torch.Tensor], batch: list[_Line], image_index: list[int], top_k: int
            ) -> list[_Line]:
    answers, _ = pipeline.answer_batch(torch.stack(images), [line.question for line in batch], top_k,
                                       torch.tensor(image_index))
    for line, found in zip(batch, answers):
        line.record["answers"] = found
    return batch


class _InOrderWriter:
    """Writes each line's output record once it and every line before it are done."""

    def __init__(self, lines: list[_Line], out, bar):
        self.lines, self.out, self.bar = lines, out, bar
        self.finished = [False] * len(lines)
        self.next = 0

    def done(self, lines) -> None:
        for line in lines:
            self.finished[line.number - 1] = True
        start = self.next
        while self.next < len(self.lines) and self.finished[self.next]:
            self.out.write(json.dumps(_output_record(self.lines[self.next]), ensure_ascii=False) + "\n")
            self.lines[self.next].record = {}  # written: its answers need not stay in memory
            self.next += 1
        if self.next > start:
            self.out.flush()
            self.bar.update(self.next - start)


def _output_record(line: _Line) -> dict[str, Any]:
    record = {"line": line.number, **line.record}
    if line.error is not None:
        record["error"] = line.error
    return record
