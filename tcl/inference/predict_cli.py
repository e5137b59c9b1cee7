"""``tcl predict``: answers from the command line, one question or a JSON-lines batch.

    tcl predict --model runs/demo/model --image img.jpg --question "what color is the circle?" [--top-k 5]
    tcl predict --model runs/demo/model --input questions.jsonl --output answers.jsonl

A batch line is ``{"image": PATH, "question": TEXT}`` (any other fields, e.g. ``"id"``, are copied to the answer);
relative image paths are looked up beside the input file first, then in the current folder. Every input line gets
one output line, in order: ``{..., "answers": [{"answer", "score"}, ...]}``, or ``{..., "error": MESSAGE}`` when the
line cannot be answered (bad JSON, missing field, empty question, missing or unreadable image) — the rest goes on.
Exit code 0 when every line was answered, 1 when some failed, 2 for a usage error (no model, no input file).
"""

from __future__ import annotations

import argparse
import codecs
import json
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
    if args.input is not None and not Path(args.input).is_file():
        raise TclError(f"{args.input}: input file not found.")
    from tcl.inference import load_vqa

    pipeline = load_vqa(args.model).to(args.device)
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


@dataclass
class _Line:
    number: int
    record: dict[str, Any] = field(default_factory=dict)
    image: torch.Tensor | None = None
    question: str = ""
    error: str | None = None


def _answer_batch(pipeline, args) -> int:
    from tqdm.auto import tqdm

    input_path = Path(args.input)
    with input_path.open("rb") as handle:
        total = sum(1 for _ in handle)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    failed = 0
    try:
        with tqdm(total=total, desc="predict", unit="question", disable=args.output is None) as bar:
            for chunk in _chunks(_read_lines(input_path, pipeline.processor), args.batch_size):
                for line in _answer_chunk(pipeline, chunk, args.top_k):
                    failed += line.error is not None
                    out.write(json.dumps(_output_record(line), ensure_ascii=False) + "\n")
                out.flush()
                bar.update(len(chunk))
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"answered {total - failed} of {total} lines; {failed} failed" + (f" (see {args.output})" if failed and
          args.output else ""), file=sys.stderr)
    return 1 if failed else 0


def _read_lines(path: Path, processor) -> Iterator[_Line]:
    """Each input line, parsed and with its image decoded, or with the error that stops it. Lines are decoded one by
    one, so a line that is not UTF-8 is its own error record (a UTF-8 byte-order mark at the start is allowed)."""
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
    from tcl.errors import BadSampleError

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
        line.image = processor.images(_locate(image, base))[0]
        processor.questions(question)  # an empty question after normalisation fails here, for this line only
        line.question = question
    except (BadSampleError, ValueError) as error:
        line.error = f"line {number}: {error}"
    return line


def _locate(image: str, base: Path) -> Path:
    path = Path(image)
    if not path.is_absolute() and (base / path).exists():
        return base / path
    return path


def _chunks(lines: Iterator[_Line], size: int) -> Iterator[list[_Line]]:
    chunk: list[_Line] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _answer_chunk(pipeline, chunk: list[_Line], top_k: int) -> list[_Line]:
    good = [line for line in chunk if line.error is None]
    if good:
        input_ids, attention_mask = pipeline.processor.questions([line.question for line in good])
        images = torch.stack([line.image for line in good])
        for line, answers in zip(good, pipeline.predictor.top_answers(images, input_ids, attention_mask, top_k)):
            line.record["answers"] = answers
    return chunk


def _output_record(line: _Line) -> dict[str, Any]:
    record = {"line": line.number, **line.record}
    if line.error is not None:
        record["error"] = line.error
    return record
