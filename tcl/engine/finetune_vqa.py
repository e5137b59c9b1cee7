"""VQA fine-tuning with the classifier or decoder answer head (``vqa.head``), then evaluation on ``data.vqa_eval``.

    python scripts/finetune_vqa.py --config configs/vqa_tiny.yaml [vqa.init=runs/pretrain_tiny] [overrides]
    tcl finetune-vqa --config configs/vqa_tiny.yaml --freeze-vision

The run folder gets the usual checkpoints and logs (``tcl.engine.trainer``), ``answer_list.json`` (the answer
vocabulary, ALBEF's format), and after training the evaluation files of ``tcl.engine.evaluate_vqa``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from tcl.config import Config, load_config, save_config
from tcl.data.bad_samples import SkipReport
from tcl.data.builders import (build_loader, build_tokenizer, build_vqa_dataset, check_data_root, tokenizer_source,
                               vqa_collator)
from tcl.data.tokenizer import run_tokenizer_dir, save_run_tokenizer, tokenizer_mismatch
from tcl.engine.checkpoint import load_checkpoint
from tcl.engine.optim import build_optimizer, build_scheduler
from tcl.engine.resume import checkpoint_to_resume, drop_metrics_after, world_of
from tcl.engine.runtime import run_training, to_device
from tcl.engine.trainer import Trainer
from tcl.errors import TclError
from tcl.evaluation.answers import ANSWER_LIST, AnswerVocabulary, merge_normalized, soft_target_matrix
from tcl.models.answer_decoder import AnswerTargets
from tcl.models.pretrained import initialise_from_pretrained
from tcl.models.saving import RUN_CONFIG, WORD_EMBEDDINGS, read_model_state
from tcl.models.vqa import TCLVQAModel, vqa_model_from_config
from tcl.pretrained_parts import check_parts, config_parts

logger = logging.getLogger("tcl.finetune_vqa")


def run(args: argparse.Namespace, config: Config) -> int:
    """The fine-tuning of ``tcl finetune-vqa`` (``tcl.engine.commands.finetune_vqa`` parses and checks its arguments
    and ``config`` first)."""
    check_parts(config_parts(config, weights=not config.vqa.init))
    return run_training(args, config, _train)


def _train(args: argparse.Namespace, config: Config, accelerator) -> int:
    # Before anything is written.
    resume_from = checkpoint_to_resume(config, args.resume, world_of(accelerator, config)) if args.resume else None
    check_data_root(config)
    tokenizer = build_tokenizer(config)
    dataset = build_vqa_dataset(config, train=True)
    limit_questions(dataset, config.vqa.max_train_questions, config.train.seed)
    output_dir = Path(config.train.output_dir)
    vocabulary = answer_vocabulary(dataset, config)
    collate = target_collator(config, tokenizer, vocabulary)
    loader = build_loader(dataset, collate, config.train.batch_size, shuffle=True, num_workers=config.data.num_workers,
                          seed=config.train.seed, drop_last=True, rank=accelerator.process_index,
                          world_size=accelerator.num_processes,
                          groups=dataset.image_groups() if config.vqa.group_by_image else None)
    steps_per_epoch = loader.sampler.batches_per_epoch() // config.train.grad_accum_steps
    if steps_per_epoch == 0:
        raise TclError(f"{len(dataset)} questions are fewer than one optimizer step; use a smaller train.batch_size.")
    torch.manual_seed(config.train.seed)
    model = build_vqa_model(config, len(tokenizer), len(vocabulary), training=True)
    torch.manual_seed(config.train.seed + accelerator.process_index)
    optimizer = build_optimizer(model, config.train)
    scheduler = build_scheduler(optimizer, steps_per_epoch * config.train.epochs, config.train, steps_per_epoch)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if accelerator.is_main_process:  # written only once everything is known to fit
        save_config(config, output_dir / "config.yaml")
        save_run_tokenizer(tokenizer, output_dir)
        vocabulary.to_json(output_dir / ANSWER_LIST)
    state = {"epoch": 0, "batch": 0, "step": 0}
    if resume_from:
        state = load_checkpoint(accelerator, resume_from)
        if accelerator.is_main_process:
            drop_metrics_after(output_dir / "metrics.jsonl", state["step"])
    trainer = Trainer(config, accelerator, model, optimizer, scheduler, loader, steps_per_epoch, state,
                      SkipReport(dataset.skipped_at_indexing), vqa_step, name="VQA fine-tuning")
    code = trainer.fit()
    if code == 0 and not args.no_eval and not trainer.stop.agreed:
        from tcl.engine.evaluate_vqa import evaluate_model

        evaluate_model(config, accelerator.unwrap_model(model), tokenizer, vocabulary, output_dir, accelerator)
    return code


def limit_questions(dataset, limit: int | None, seed: int) -> None:
    """Keeps a seeded random subset of ``limit`` questions (the thesis protocol caps training at 100,000)."""
    if limit is not None and limit < len(dataset):
        dataset.table = dataset.table.shuffle(seed=seed).select(range(limit))


def answer_vocabulary(dataset, config: Config) -> AnswerVocabulary:
    """Builds the answer list from the training annotations."""
    records = dataset.table.select_columns(["multiple_choice_answer", "answers"]).to_list()
    vocabulary = AnswerVocabulary.build(records, min_count=config.vqa.min_answer_count)
    if len(vocabulary) == 0:
        raise TclError("no answer reaches vqa.min_answer_count in the training annotations; lower it.")
    logger.info("answer vocabulary: %d answers (min count %d)", len(vocabulary), config.vqa.min_answer_count)
    return vocabulary


def build_vqa_model(config: Config, vocab_size: int, num_answers: int, training: bool = True) -> TCLVQAModel:
    """The VQA model, initialised from ``vqa.init`` (a pretraining run or checkpoint) when given."""
    model = vqa_model_from_config(config, vocab_size, num_answers, training)
    if not config.vqa.init:
        initialise_from_pretrained(model, config.model)
        model.sync_momentum()
    if config.vqa.init:
        state = read_model_state(config.vqa.init)
        check_tokenizer_fits(state, config, config.model.vocab_size or vocab_size)
        model.load_pretrained_encoders(state, f"vqa.init {config.vqa.init}")
        logger.info("encoders%s initialised from %s", " and answer decoder" if config.vqa.head == "decoder" else "",
                    config.vqa.init)
    if config.vqa.freeze_vision or (config.vqa.freeze_pretrained_vision and config.vqa.init):
        model.freeze_vision()
        logger.info("image encoder kept fixed (vqa.freeze_vision%s)",
                    "" if config.vqa.freeze_vision else ": it comes from a pretraining, vqa.freeze_pretrained_vision")
    return model


def check_tokenizer_fits(state: dict[str, torch.Tensor], config: Config, vocab_size: int) -> None:
    """Stops with ``tokenizer_mismatch`` when the pretraining's word embeddings have another number of rows than
    the tokenizer has words: the weights were trained with another tokenizer (the setting to change, not the shapes)."""
    rows = state.get(WORD_EMBEDDINGS)
    if rows is None or rows.shape[0] == vocab_size:
        return
    raise tokenizer_mismatch(f"vqa.init {config.vqa.init}", rows.shape[0], vocab_size, tokenizer_source(config),
                             init_tokenizer(config.vqa.init))


def init_tokenizer(init: str | Path) -> str | None:
    """The tokenizer a pretraining run trained with: the one it saved, or (runs older than that) the one its
    config.yaml names; None when neither is known."""
    saved = run_tokenizer_dir(init)
    if saved is not None:
        return str(saved)
    for folder in (Path(init), Path(init).parent):
        if (folder / RUN_CONFIG).is_file():
            return tokenizer_source(load_config(folder / RUN_CONFIG))
    return None


def target_collator(config: Config, tokenizer, vocabulary: AnswerVocabulary):
    """The training collator of the configured head."""
    collate = vqa_collator(config, tokenizer, train=True)
    if config.vqa.head == "decoder":
        return AnswerSequenceCollator(collate, tokenizer, exact=config.vqa.merge_answers == "exact")
    return TargetCollator(collate, vocabulary)


class TargetCollator:
    """Adds the soft-score targets [B, A] of the classifier head to a VQA batch."""

    def __init__(self, collate, vocabulary: AnswerVocabulary):
        self.collate, self.vocabulary = collate, vocabulary

    def __call__(self, samples: list[dict]) -> dict:
        batch = self.collate(samples)
        targets = soft_target_matrix(batch["human_answers"], self.vocabulary)
        for row, (humans, answers, weights) in enumerate(zip(batch["human_answers"], batch["answers"],
                                                             batch["weights"])):
            if len(humans) == 1:
                # A single answer (Visual Genome) never earns an official score: its target is TCL's weight.
                for answer, weight in zip(*merge_normalized(answers, weights)):
                    for class_id in self.vocabulary.candidates(answer):
                        targets[row, class_id] = weight
        batch["targets"] = targets
        return batch


class AnswerSequenceCollator:
    """Adds the decoder head's training answers (``AnswerTargets``): every question's unique answers (by normal form,
    or as written with ``vqa.merge_answers: exact``) with TCL's weights, tokenised ``[CLS] a [SEP]``."""

    def __init__(self, collate, tokenizer, exact: bool = False):
        self.collate, self.tokenizer, self.exact = collate, tokenizer, exact

    def __call__(self, samples: list[dict]) -> dict:
        batch = self.collate(samples)
        answers, weights, counts = [], [], []
        for question_answers, question_weights in zip(batch["answers"], batch["weights"]):
            merged, merged_weights = merge_normalized(question_answers, question_weights, self.exact)
            answers += merged
            weights += merged_weights
            counts.append(len(merged))
        if not answers:  # only test questions: nothing to learn from
            raise TclError("a VQA training batch has no answers; fine-tune on an annotated split.")
        tokens = self.tokenizer.encode_answers(answers)
        batch["targets"] = AnswerTargets(tokens.input_ids, tokens.attention_mask,
                                         torch.tensor(weights, dtype=torch.float32),
                                         torch.tensor(counts, dtype=torch.long))
        return batch


def vqa_step(model, batch: dict, alpha: float, boundary: bool, device, step: int = 0):
    """One forward of the VQA model with its loss (BCE for the classifier, weighted sequence NLL for the decoder)."""
    batch = to_device(batch, device)
    return model(batch["image"], batch["input_ids"], batch["attention_mask"], targets=batch["targets"], alpha=alpha,
                 step_boundary=boundary, image_index=batch["image_index"])

