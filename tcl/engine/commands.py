"""The engine's command lines, answered before the heavy stack is imported.

``tcl pretrain --help`` used to take 11-12 s on 2 cores, and a typo in an override was reported as late, because
the training modules import torch, accelerate and DeepSpeed at the top. Here each command's arguments are parsed
and its configuration (or run folder) checked with nothing heavier than PyYAML; only then is the module that does
the work imported and run. ``benchmarks/bench_startup.py`` measures the start-up times.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tcl.config import Config, load_config
from tcl.errors import TclError, run_command
from tcl.run_folder import folder_start


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


def _checked_training_config(args: argparse.Namespace, extra: list[str] = ()) -> Config:
    """The run's configuration (its overrides, then ``extra``); unknown keys, bad values, impossible combinations and
    --resume with --overwrite are refused here, before torch is imported."""
    folder_start(args.resume, args.overwrite)
    return load_config(args.config, [*args.overrides, *extra])


def _check_run_folder(args: argparse.Namespace) -> None:
    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        raise TclError(f"--run {run}: {'no such folder' if not run.is_dir() else 'no config.yaml in it'}; give the "
                       "output folder of a training run (its train.output_dir).")
    load_config(run / "config.yaml")


# Each command parses and checks its arguments, then imports the module that does the work (torch, accelerate and
# DeepSpeed come with it) inside the function, so that --help and argument errors never wait for them.
def pretrain(argv: list[str] | None = None) -> int:
    """``tcl pretrain`` (``scripts/pretrain.py``): TCL pretraining."""
    def work(args: argparse.Namespace) -> int:
        config = _checked_training_config(args)
        from tcl.engine.pretrain import run

        return run(args, config)

    args = pretrain_arguments(argv)
    return run_command(work, args, args.debug)


def finetune_vqa(argv: list[str] | None = None) -> int:
    """``tcl finetune-vqa`` (``scripts/finetune_vqa.py``): VQA fine-tuning, then its evaluation."""
    def work(args: argparse.Namespace) -> int:
        config = _checked_training_config(args, ["vqa.freeze_vision=true"] if args.freeze_vision else [])
        from tcl.engine.finetune_vqa import run

        return run(args, config)

    args = finetune_arguments(argv)
    return run_command(work, args, args.debug)


def evaluate_vqa(argv: list[str] | None = None) -> int:
    """``tcl evaluate-vqa`` (``scripts/evaluate_vqa.py``): a fine-tuning run's VQA accuracy."""
    def work(args: argparse.Namespace) -> int:
        _check_run_folder(args)
        from tcl.engine.evaluate_vqa import run

        return run(args)

    args = evaluate_vqa_arguments(argv)
    return run_command(work, args, args.debug)


def evaluate_retrieval(argv: list[str] | None = None) -> int:
    """``tcl evaluate-retrieval`` (``scripts/evaluate_retrieval.py``): a pretraining run's zero-shot retrieval."""
    def work(args: argparse.Namespace) -> int:
        _check_run_folder(args)
        from tcl.engine.evaluate_retrieval import run

        return run(args)

    args = evaluate_retrieval_arguments(argv)
    return run_command(work, args, args.debug)
