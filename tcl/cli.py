"""The ``tcl`` command line (also ``python -m tcl``). Subcommands grow with the project.

Errors that are the user's to fix (TclError) are printed as one message with exit code 2; ``--debug`` shows the
traceback as well.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tcl.config import ShapesConfig
from tcl.errors import ConfigError, run_command
from tcl.serving.serve_cli import PRECISIONS
from tcl.serving.serve_cli import add_arguments as serve_arguments

logger = logging.getLogger("tcl")


def _make_data(args: argparse.Namespace) -> int:
    from tcl.make_data import (dataset_exists, format_summary, generated_with, generator_settings,
                                    make_shapes_dataset, summarize)

    settings = generator_settings(args.train_images, args.val_images, args.image_size, args.questions_per_image,
                                  args.seed, args.max_objects, args.extra_relation_questions)
    if dataset_exists(args.out) and not args.force:
        recorded = generated_with(args.out)
        if recorded == settings:
            print(f"{args.out} already holds this generated dataset (use --force to regenerate).")
        else:
            print(f"{args.out} holds a generated dataset made with other settings ({recorded}, asked: {settings}); "
                  f"use --force to regenerate it.")
        print(format_summary(summarize(args.out)))
        return 0
    summary = make_shapes_dataset(args.out, **settings, show_progress=not args.quiet)
    print(format_summary(summary))
    return 0


def _make_shards(args: argparse.Namespace) -> int:
    import random

    from tcl.config import load_config
    from tcl.data.builders import pretrain_pairs
    from tcl.data.shards import write_shards

    table, image_root, _ = pretrain_pairs(load_config(args.config, args.overrides))
    order = list(range(len(table)))
    if not args.keep_order:  # a seeded shuffle: an image's captions (adjacent rows) land in different shards
        random.Random(args.seed).shuffle(order)
    report = write_shards((table[row] for row in order), image_root, args.out, args.samples_per_shard,
                          total=len(table), show_progress=not args.quiet, keys=order)
    left_out = ", ".join(f"{reason} {count}" for reason, count in report.skipped.most_common()) or "none"
    print(f"wrote {report.samples} samples in {len(report.shards)} shards to {args.out} (left out: {left_out}); "
          f"the list of shards is {args.out}/shards.json")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tcl.demo import run_demo

    run_demo(args.out, args.overrides)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    import yaml

    from tcl.config import SHIPPED_CONFIGS, load_config, shipped_configs

    if args.list:
        print(f"shipped configs (in {SHIPPED_CONFIGS}); pass a name or a path to --config:")
        print("\n".join(f"  {name}" for name in shipped_configs()))
        print(f"accelerate launch configs: {SHIPPED_CONFIGS / 'accelerate'}")
        return 0
    if args.config is None:
        raise ConfigError("tcl config: name a config (a YAML file or a shipped name such as pretrain_tiny), or "
                          "pass --list.")
    config = load_config(args.config, args.overrides)
    print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
    return 0


def _fetch_pretrained(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tcl.config import load_config
    from tcl.pretrained_parts import OVERRIDES_FILE, config_parts, fetch_parts

    overrides = fetch_parts(config_parts(load_config(args.config, args.overrides)), args.out)
    if not overrides:
        print(f"nothing to fetch: {args.config} names no pretrained part on the hub (none, or local paths already)")
        return 0
    line = " ".join(f"{setting}={path}" for setting, path in overrides.items())
    print(f"wrote {', '.join(overrides)} into {args.out}; where the hub is out of reach, copy the folder and add "
          f"these overrides (also in {Path(args.out) / OVERRIDES_FILE}):\n  {line}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from tcl.inference.predict_cli import run

    return run(args)


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="saved model folder, hub name, or fine-tuning run folder")
    parser.add_argument("--image", help="one image file")
    parser.add_argument("--question", help="one question")
    parser.add_argument("--input", help="JSON-lines file of {\"image\", \"question\"} (batch mode)")
    parser.add_argument("--output", help="JSON-lines file for the answers (batch mode; default: standard output)")
    parser.add_argument("--top-k", type=int, default=5, help="answers per question (default 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="questions per forward pass in batch mode")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes decoding images in batch mode (default: the CPUs, at most 4; 0: this one)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (default: bf16 autocast on a GPU with bf16, else fp32), fp32 or bf16")


def _convert(args: argparse.Namespace) -> int:
    from tcl.inference.convert_cli import run

    return run(args)


def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", choices=("tcl", "albef"), required=True,
                        help="which project the checkpoint comes from (both use the same key set)")
    parser.add_argument("checkpoint", help="the official .pth file")
    parser.add_argument("--out", required=True, help="output model folder")
    parser.add_argument("--task", choices=("pretrain", "vqa"), default="pretrain")
    parser.add_argument("--image-size", type=int, default=None,
                        help="resample position embeddings to this resolution (default: the checkpoint's)")
    parser.add_argument("--tokenizer", default=None, help="BERT tokenizer folder or hub name (bert-base-uncased)")
    parser.add_argument("--answer-list", default=None, help="answer_list.json (needed for --task vqa)")
    parser.add_argument("--k-test", type=int, default=128, help="decoder candidates ranked per question")
    parser.add_argument("--rank-score", choices=("sequence", "tcl"), default="sequence")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow a checkpoint whose unpickling runs code (only for files you trust)")


def _serve(args: argparse.Namespace) -> int:
    from tcl.serving.serve_cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tcl", description="TCL vision-language pretraining and VQA.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("make-data", help="generate the embedded COCO/VQA-format shapes dataset",
                               description="Renders the generated shapes world in the official COCO/VQA file layout "
                                           "(images, captions, questions, answers) and builds its tokenizer. The same "
                                           "options always give byte-identical files.")
    shapes = ShapesConfig()
    make.add_argument("--out", default="data/shapes", help="output folder (default: data/shapes)")
    make.add_argument("--train-images", type=int, default=shapes.train_images,
                      help=f"images of train2014 (default {shapes.train_images})")
    make.add_argument("--val-images", type=int, default=shapes.val_images,
                      help=f"images of val2014 (default {shapes.val_images})")
    make.add_argument("--image-size", type=int, default=shapes.image_size,
                      help=f"side of the square images in pixels (default {shapes.image_size})")
    make.add_argument("--questions-per-image", type=int, default=shapes.questions_per_image,
                      help=f"VQA questions per image (default {shapes.questions_per_image})")
    make.add_argument("--seed", type=int, default=shapes.seed, help=f"random seed (default {shapes.seed})")
    make.add_argument("--max-objects", type=int, default=shapes.max_objects, choices=range(1, 5), metavar="{1..4}",
                      help=f"objects per image at most (default {shapes.max_objects}; fewer make an easier world)")
    make.add_argument("--extra-relation-questions", type=int, default=shapes.extra_relation_questions, metavar="N",
                      help="more relation questions for each training image with two objects or more (default "
                           f"{shapes.extra_relation_questions}; the validation split keeps the families' shares equal)")
    make.add_argument("--force", action="store_true", help="regenerate even if the data exists")
    make.add_argument("--quiet", action="store_true", help="no progress bars")
    make.set_defaults(run=_make_data)

    shards = commands.add_parser(
        "make-shards", help="write a pretraining source as WebDataset tar shards (img2dataset's layout)",
        description="Writes the image-text pairs of a config's data.pretrain_source (coco or albef_json: the "
                    "embedded world, COCO captions, ALBEF lists) as tar shards: <key>.jpg|png|webp (the file's own "
                    "bytes), <key>.txt (the first caption), <key>.json (source path and every caption), and "
                    "shards.json listing the shards and their sample counts. Missing or corrupt images are left out "
                    "and counted. Rows are shuffled (seeded) unless --keep-order; each key is the row's index in the "
                    "source.")
    shards.add_argument("config", help="YAML config or shipped name whose pretraining source to convert")
    shards.add_argument("overrides", nargs="*", help="section.key=value overrides (e.g. data.root=...)")
    shards.add_argument("--out", required=True, help="folder for the shards")
    shards.add_argument("--samples-per-shard", type=int, default=1000, help="samples per tar file (default 1000)")
    shards.add_argument("--keep-order", action="store_true",
                        help="write the rows in the source's order (default: a seeded shuffle, so that a stream's "
                             "shuffle buffer does not hold an image's several captions together)")
    shards.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    shards.add_argument("--quiet", action="store_true", help="no progress bar")
    shards.set_defaults(run=_make_shards)

    demo = commands.add_parser("demo", help="the main job on the embedded default: data, pretraining, VQA "
                                            "fine-tuning and evaluation, baselines, examples")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("overrides", nargs="*", help="section.key=value overrides applied to every stage")
    demo.set_defaults(run=_demo)

    # Listed for --help; its arguments are parsed by the training script itself (see main()).
    commands.add_parser("pretrain", help="TCL pretraining: same arguments as scripts/pretrain.py (--help there)")
    commands.add_parser("finetune-vqa", help="VQA fine-tuning: same arguments as scripts/finetune_vqa.py")
    commands.add_parser("evaluate-vqa", help="VQA evaluation: same arguments as scripts/evaluate_vqa.py")
    commands.add_parser("evaluate-retrieval",
                        help="zero-shot retrieval of a pretraining run: same arguments as scripts/evaluate_retrieval.py")

    fetch = commands.add_parser(
        "fetch-pretrained", help="download the pretrained parts a config names into one folder (for offline nodes)",
        description="Downloads every pretrained part a config names from the Hugging Face hub (image encoder "
                    "weights, BERT weights, tokenizer) and writes them into one folder: vision/ as timm saves a "
                    "model, text/ and tokenizer/ as transformers' save_pretrained. Prints the overrides that use "
                    "the folder, for compute nodes that cannot reach the hub.")
    fetch.add_argument("--config", required=True, help="YAML config or shipped name (pretrain_4m, vqa, ...)")
    fetch.add_argument("--out", required=True, help="folder for the parts")
    fetch.add_argument("overrides", nargs="*", help="section.key=value overrides")
    fetch.set_defaults(run=_fetch_pretrained)

    predict = commands.add_parser("predict", help="answer questions about images with a VQA model (JSON out)")
    _predict_arguments(predict)
    predict.set_defaults(run=_predict)

    convert = commands.add_parser("convert", help="import an official TCL/ALBEF checkpoint as a model folder")
    _convert_arguments(convert)
    convert.set_defaults(run=_convert)

    serve = commands.add_parser("serve", help="a web page and JSON API for asking questions about images")
    serve_arguments(serve)
    serve.set_defaults(run=_serve)

    check = commands.add_parser("config", help="validate a config with overrides and print the resolved values",
                                description="Validates a config (a YAML file or a shipped name) with its overrides "
                                            "and prints every resolved value as YAML, defaults and base files "
                                            "included: the file a run would write as its config.yaml.")
    check.add_argument("config", nargs="?", help="YAML config file or shipped name (pretrain_tiny, vqa_tiny, "
                                                 "pretrain_4m, vqa)")
    check.add_argument("--list", action="store_true", help="list the shipped configs and where they are")
    check.add_argument("overrides", nargs="*", help="section.key=value overrides")
    check.set_defaults(run=_check_config)
    return parser


# Subcommands whose whole argument list belongs to a training script (its own --help, --resume, overrides); each
# parses and checks it before importing torch (tcl.engine.commands).
FORWARDED = ("pretrain", "finetune-vqa", "evaluate-vqa", "evaluate-retrieval")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in FORWARDED:
        from tcl.engine import commands

        position = argv.index(command)
        rest = argv[:position] + argv[position + 1:]  # --debug before the subcommand is passed on too
        return getattr(commands, command.replace("-", "_"))(rest)
    args = build_parser().parse_args(argv)
    return run_command(args.run, args, args.debug)


if __name__ == "__main__":
    sys.exit(main())
