"""A run folder carries its tokenizer: pretraining and fine-tuning save it, fine-tuning from a pretraining uses it on a
VQA set of other words, and weights with another tokenizer stop with the setting to change."""

import json
import shutil
from pathlib import Path

import pytest

from tcl.data.tokenizer import RUN_TOKENIZER, build_wordpiece_tokenizer, load_tokenizer
from tcl.engine.commands import finetune_vqa, pretrain

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
FAST = ["train.batch_size=8", "model.queue_size=32", "data.num_workers=0", "train.warmup_steps=2",
        "eval.batch_size=16", "eval.max_questions=16"]
# Words the embedded world never uses, so its tokenizer splits them into pieces.
REWORDING = (("what color is the", "kindly name the tint of the"), ("how many", "tally how many"),
             ("where is the", "whereabouts of the"))


def _reworded_vqa_set(shapes_root: Path, out: Path) -> Path:
    """The generated VQA files in the official layout, questions reworded with new words, the same images (linked),
    and no tokenizer beside them."""
    (out / "annotations").mkdir(parents=True)
    (out / "images").symlink_to(shapes_root / "images")
    for path in (shapes_root / "annotations").glob("v2_*.json"):
        data = json.loads(path.read_text())
        for question in data.get("questions", []):
            for old, new in REWORDING:
                question["question"] = question["question"].replace(old, new)
        (out / "annotations" / path.name).write_text(json.dumps(data))
    return out


def _pretrain(shapes_root: Path, out: Path) -> None:
    from accelerate.state import AcceleratorState

    assert pretrain(["--config", str(REPO / "configs/pretrain_tiny.yaml"), f"data.root={shapes_root}",
                          f"train.output_dir={out}", *FAST, "train.max_steps=1", "eval.retrieval_file=null"]) == 0
    AcceleratorState._reset_state(True)


def _finetune(root: Path, out: Path, *extra: str) -> int:
    return finetune_vqa(["--config", str(REPO / "configs/vqa_tiny.yaml"), f"data.root={root}",
                              f"train.output_dir={out}", *FAST, "train.max_steps=1", *extra])


def _vocab(folder: Path) -> dict[str, int]:
    return load_tokenizer(folder).get_vocab()


def test_fine_tuning_a_pretraining_on_a_vqa_set_of_new_words_uses_the_pretrainings_tokenizer(shapes_root, tmp_path):
    from tcl.inference.runs import load_vqa_run

    _pretrain(shapes_root, tmp_path / "pre")
    assert _vocab(tmp_path / "pre" / RUN_TOKENIZER) == _vocab(shapes_root / "tokenizer")
    root = _reworded_vqa_set(shapes_root, tmp_path / "reworded")
    tokenizer = load_tokenizer(tmp_path / "pre" / RUN_TOKENIZER)
    assert "tint" not in tokenizer.vocab and tokenizer.tokenize("tint") == ["t", "##i", "##n", "##t"]
    out = tmp_path / "vqa"
    assert _finetune(root, out, f"vqa.init={tmp_path / 'pre'}") == 0
    assert _vocab(out / RUN_TOKENIZER) == _vocab(tmp_path / "pre" / RUN_TOKENIZER)
    assert json.loads((out / "vqa_scores_val2014_first16.json").read_text())["num_questions"] == 16
    # The fine-tuned run answers with the tokenizer it trained with, wherever its data went.
    (root / "annotations").rename(tmp_path / "moved")
    config, model, run_tokenizer, _ = load_vqa_run(out)
    assert len(run_tokenizer) == model.text_encoder.embeddings.word_embeddings.num_embeddings == len(tokenizer)


def test_weights_and_a_tokenizer_that_do_not_belong_together_name_the_setting_to_change(shapes_root, tmp_path,
                                                                                         capsys):
    _pretrain(shapes_root, tmp_path / "pre")
    other = tmp_path / "other_tokenizer"
    build_wordpiece_tokenizer(["a world with other words entirely"], other)
    capsys.readouterr()
    assert _finetune(shapes_root, tmp_path / "vqa", f"vqa.init={tmp_path / 'pre'}", f"data.tokenizer={other}") == 2
    message = capsys.readouterr().err
    words = len(load_tokenizer(other))
    assert f"has {words} words" in message and f"data.tokenizer={tmp_path / 'pre' / RUN_TOKENIZER} " in message
    # A run from before runs kept their tokenizer: the one its config.yaml names.
    shutil.rmtree(tmp_path / "pre" / RUN_TOKENIZER)
    assert _finetune(shapes_root, tmp_path / "vqa2", f"vqa.init={tmp_path / 'pre'}", f"data.tokenizer={other}") == 2
    assert f"data.tokenizer={shapes_root / 'tokenizer'} " in capsys.readouterr().err
