"""``tcl serve --model DIR``: loads a VQA model and serves the page and API on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tcl.errors import TclError

logger = logging.getLogger(__name__)

# The generated data's val images are the examples when nothing else is given and they exist.
DEFAULT_EXAMPLES = Path("data/shapes/images/val2014")
# tcl.inference.precision.PRECISIONS, spelled out: --help must not import torch (tcl.inference does).
PRECISIONS = ("auto", "fp32", "bf16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="saved model folder, hub name, or fine-tuning run folder")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to all)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--examples", default=None,
                        help=f"folder of example images offered on the page (default: {DEFAULT_EXAMPLES} if present)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload (default 10 MB)")
    parser.add_argument("--max-image-pixels", type=int, default=40_000_000,
                        help="largest accepted image in pixels after decoding (default 40 million)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (default: bf16 autocast on a GPU with bf16, else fp32), fp32 or bf16")
    parser.add_argument("--max-batch", type=int, default=16,
                        help="questions answered in one forward pass at most (default 16; 1: one at a time)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long a batch waits for requests still being decoded, in ms (default 5)")
    parser.add_argument("--max-queue", type=int, default=256,
                        help="questions that may wait for the model; further requests get 503 (default 256)")


def run(args: argparse.Namespace) -> int:
    from tcl.serving.app import ServeSettings, create_app, find_examples

    if not 0 <= args.port <= 65535:
        raise TclError(f"--port must be between 0 and 65535, got {args.port}.")
    if args.max_upload_mb <= 0 or args.max_image_pixels <= 0:
        raise TclError("--max-upload-mb and --max-image-pixels must be positive.")
    if args.max_batch < 1 or args.max_queue < 1 or args.max_wait_ms < 0:
        raise TclError("--max-batch and --max-queue must be at least 1, and --max-wait-ms not negative.")
    if args.examples and not Path(args.examples).is_dir():
        raise TclError(f"{args.examples}: --examples must be a folder of images.")
    import uvicorn

    from tcl.inference import load_vqa
    from tcl.serving.protocol import HeadDeadlineProtocol

    pipeline = load_vqa(args.model, args.device, args.precision)
    examples = find_examples(args.examples or DEFAULT_EXAMPLES)
    settings = ServeSettings(max_upload_bytes=int(args.max_upload_mb * 2**20), max_image_pixels=args.max_image_pixels,
                             examples=examples, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             max_queue=args.max_queue)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s: anyone who can reach this machine can use the model", args.host)
    logger.info("serving %s with %d example images (%s on %s; batches of up to %d questions)", args.model,
                len(examples), pipeline.precision, args.device, args.max_batch)
    uvicorn.run(create_app(pipeline, settings), host=args.host, port=args.port, log_level="info",
                http=HeadDeadlineProtocol, limit_concurrency=settings.max_connections, timeout_keep_alive=5)
    return 0
