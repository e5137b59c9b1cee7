"""Models of a training run folder, for inference: a pretraining run (``tcl pretrain``) and a VQA fine-tuning run
(``tcl finetune-vqa``), each with the tokenizer and settings of its resolved ``config.yaml``."""

from __future__ import annotations

from pathlib import Path

from tcl.config import Config, load_config
from tcl.data.builders import run_tokenizer
from tcl.errors import TclError
from tcl.evaluation.answers import ANSWER_LIST, AnswerVocabulary
from tcl.models.pretrain import TCLPretrainModel
from tcl.models.saving import RUN_CONFIG, load_model_weights
from tcl.models.vqa import TCLVQAModel, vqa_model_from_config


def load_pretrain_run(run_dir: Path) -> tuple[Config, TCLPretrainModel, object]:
    """(config, model in eval mode with its latest weights, tokenizer) of a pretraining run folder."""
    config = load_config(Path(run_dir) / RUN_CONFIG)
    tokenizer = run_tokenizer(run_dir, config)
    model = TCLPretrainModel(config.model, config.loss, config.model.vocab_size or len(tokenizer))
    load_model_weights(model, run_dir)
    return config, model.eval(), tokenizer


def load_vqa_run(run_dir: Path, overrides: list[str] | None = None
                 ) -> tuple[Config, TCLVQAModel, object, AnswerVocabulary]:
    """(config, model with its latest weights, tokenizer, answer vocabulary) of a fine-tuning run folder."""
    config = load_config(Path(run_dir) / RUN_CONFIG, overrides)
    if not (Path(run_dir) / ANSWER_LIST).is_file():
        raise TclError(f"{run_dir} is not a VQA fine-tuning run (it has no {ANSWER_LIST}); if it is a pretraining "
                       f"run, fine-tune it first: tcl finetune-vqa vqa.init={run_dir} train.output_dir=DIR, then use "
                       "DIR (tcl.load_pretrained reads a pretraining run as it is).")
    vocabulary = AnswerVocabulary.from_json(Path(run_dir) / ANSWER_LIST)
    tokenizer = run_tokenizer(run_dir, config)
    model = vqa_model_from_config(config, len(tokenizer), len(vocabulary))
    # The decoder head's momentum teacher only matters for training.
    load_model_weights(model, run_dir, skip_prefixes=("momentum.",))
    return config, model, tokenizer, vocabulary
