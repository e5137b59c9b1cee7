"""``tcl convert``: an official TCL/ALBEF checkpoint → a model folder that ``tcl.load_pretrained`` /
``tcl.load_vqa`` / ``tcl predict`` read.

    tcl convert --from tcl TCL_4M.pth --out models/tcl_4m --tokenizer bert-base-uncased
    tcl convert --from albef ALBEF_4M.pth --out models/albef_vqa_init --task vqa --image-size 384 \\
        --answer-list answer_list.json --tokenizer /path/to/bert-base-uncased

``--task vqa`` from a pretraining checkpoint initialises the answer decoder from the fusion layers (TCL.md Part B
§6.4); from an official VQA fine-tune (``vqa.pth``) it imports the fine-tuned model. The tokenizer (a hub name or a
local folder) and, for VQA, the answer list make the folder a complete pipeline; without a loadable tokenizer only
the weights and ``config.json`` are written and the message says what to add.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tcl.atomic import write_json_atomic
from tcl.errors import DataError, TclError

logger = logging.getLogger("tcl.convert")


def run(args: argparse.Namespace) -> int:
    from tcl.evaluation.answers import ANSWER_LIST, AnswerVocabulary
    from tcl.models.pretrain import TCLPretrainModel
    from tcl.models.vqa import TCLVQAModel

    out = Path(args.out)
    answers = None
    if args.task == "vqa":
        if args.answer_list is None:
            raise TclError("--task vqa needs --answer-list (ALBEF's answer_list.json, or one written by "
                           "`tcl finetune-vqa`).")
        answers = AnswerVocabulary.from_json(args.answer_list)
        model = TCLVQAModel.from_official(args.checkpoint, len(answers), args.image_size, args.trust_checkpoint)
    else:
        model = TCLPretrainModel.from_official(args.checkpoint, args.image_size, args.trust_checkpoint)
    model.save_pretrained(out)
    size = model.model_config.image_size
    print(f"converted {args.source} checkpoint {args.checkpoint} ({args.task}, {size} px) → {out}")
    processor = _processor(args.tokenizer, size, model.model_config.max_text_len, answers)
    if processor is None:
        if answers is not None:
            answers.to_json(out / ANSWER_LIST)
        print(f"no processor written: pass --tokenizer (e.g. a local bert-base-uncased folder) to make {out} "
              f"usable by tcl.load_vqa / tcl predict.")
        return 0
    processor.save_pretrained(out)
    if args.task == "vqa":
        import json

        from tcl.models.saving import CONFIG_FILE

        payload = json.loads((out / CONFIG_FILE).read_text())
        payload["answering"] = {"k_test": args.k_test, "rank_score": args.rank_score}
        write_json_atomic(payload, out / CONFIG_FILE, indent=2)
    return 0


def _processor(tokenizer: str | None, image_size: int, max_text_len: int, answers):
    from tcl.data.tokenizer import TclTokenizer, load_tokenizer
    from tcl.inference.processor import ImageSettings, TCLProcessor

    if tokenizer is None:
        return None
    try:
        loaded = TclTokenizer(load_tokenizer(tokenizer))
    except DataError as error:
        logger.warning("%s", error)
        return None
    return TCLProcessor(loaded, ImageSettings(image_size=image_size, max_text_len=max_text_len), answers)
