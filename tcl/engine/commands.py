"""The engine's command lines, answered before the heavy stack is imported.

``tcl pretrain --help`` used to take 11-12 s on 2 cores, and a typo in an override was reported as late, because
the training modules import torch, accelerate and DeepSpeed at the top. Here each command's arguments are parsed
and its configuration (or run folder) checked with nothing heavier than PyYAML; only then is the module that does
the work imported and run. ``benchmarks/bench_startup.py`` measures the start-up times.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Callable

from tcl.config import load_config
from tcl.errors import TclError, run_command


def training_parser(prog: str, description: str, default_config: str) -> argparse.ArgumentParser:
    """The arguments every training script takes: --config, --resume, --debug and ``section.key=value`` overrides
    (parse with ``parse_intermixed_args`` so overrides may follow flags)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", default=default_config,
                        help=f"YAML config file or shipped config name (default {default_config}; see tcl config --list)")
    parser.add_argument("--resume", default=None, help="'latest', 'latest-intact' (the newest undamaged checkpoint) "
                        "or a checkpoint folder to continue from")
    parser.add_argument("--overwrite", action="store_true", help="delete the run already in train.output_dir "
                        "(its checkpoints, logs and results) before starting; without it such a folder is refused")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    return parser


def folder_start(args: argparse.Namespace) -> str:
    """How a training run starts in its folder (``tcl.engine.run_lock.STARTS``), from --resume and --overwrite."""
    if args.resume and args.overwrite:
        raise TclError("--resume continues the run in train.output_dir and --overwrite deletes it: give one of them.")
    return "resume" if args.resume else "overwrite" if args.overwrite else "new"


def pretrain_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = training_parser("tcl pretrain", "TCL pretraining", "pretrain_tiny")
    parser.add_argument("--init", default=None, help="checkpoint folder of ours to start from (continued pretraining)")
    parser.add_argument("--dump-rank-states", action="store_true",
                        help="also write every rank's final model state (tests of distributed consistency)")
    return parser.parse_intermixed_args(argv)


def finetune_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = training_parser("tcl finetune-vqa", "VQA fine-tuning (classifier or decoder head)", "vqa_tiny")
    parser.add_argument("--freeze-vision", action="store_true", help="keep the image encoder fixed (vqa.freeze_vision)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    return parser.parse_intermixed_args(argv)


def evaluate_vqa_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tcl evaluate-vqa", description="VQA evaluation with the official metric")
    parser.add_argument("--run", required=True, help="a fine-tuning run folder (config.yaml, answer_list.json)")
    parser.add_argument("--split", default=None, help="split to evaluate (default: the run's data.vqa_eval)")
    parser.add_argument("--blind", action="store_true", help="replace every image by one constant image")
    parser.add_argument("--max-questions", type=int, default=None, help="evaluate the first N questions only")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return parser.parse_args(argv)


def evaluate_retrieval_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tcl evaluate-retrieval",
                                     description="zero-shot image-text retrieval of a pretraining run")
    parser.add_argument("--run", required=True, help="a pretraining run folder (config.yaml, checkpoints)")
    parser.add_argument("--split", default=None,
                        help="captions split: annotations/captions_<split>.json under data.root (default: the run's "
                             "eval.retrieval_file)")
    parser.add_argument("--max-images", type=int, default=None, help="the first N images (default: the run's)")
    parser.add_argument("--captions-per-image", type=int, default=None,
                        help="the first K captions of each image (default: the run's; 1 = the generated world's "
                             "full listing)")
    parser.add_argument("--k-test", type=int, default=None, help="candidates re-ranked by ITM (default: the run's)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return parser.parse_args(argv)


def _check_training_config(args: argparse.Namespace) -> None:
    folder_start(args)  # --resume with --overwrite
    load_config(args.config, args.overrides)  # unknown keys, bad values and impossible combinations: ConfigError


def _check_run_folder(args: argparse.Namespace) -> None:
    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        raise TclError(f"--run {run}: {'no such folder' if not run.is_dir() else 'no config.yaml in it'}; give the "
                       "output folder of a training run (its train.output_dir).")
    load_config(run / "config.yaml")


def _command(parse: Callable, check: Callable, module: str) -> Callable[[list[str] | None], int]:
    def main(argv: list[str] | None = None) -> int:
        args = parse(argv)

        def checked_run(args: argparse.Namespace) -> int:
            check(args)
            return importlib.import_module(module).run(args)

        return run_command(checked_run, args, args.debug)

    return main


pretrain = _command(pretrain_arguments, _check_training_config, "tcl.engine.pretrain")
finetune_vqa = _command(finetune_arguments, _check_training_config, "tcl.engine.finetune_vqa")
evaluate_vqa = _command(evaluate_vqa_arguments, _check_run_folder, "tcl.engine.evaluate_vqa")
evaluate_retrieval = _command(evaluate_retrieval_arguments, _check_run_folder, "tcl.engine.evaluate_retrieval")
