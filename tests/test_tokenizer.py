"""Tokeniser convention (TCL.md Part B §1.3) and text normalisation (§5.4)."""

from pathlib import Path

import pytest

from tcl.text_cleaning import pre_caption, pre_question
from tcl.data.tokenizer import TclTokenizer, build_wordpiece_tokenizer, load_tokenizer
from tcl.errors import DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    corpus = ["a red circle to the left of a blue square", "how many circles are there", "yes", "no", "gray", "2"]
    build_wordpiece_tokenizer(corpus, folder)
    return TclTokenizer(load_tokenizer(folder))


def test_special_ids(tokenizer):
    assert tokenizer.pad_id == 0
    assert len({tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id}) == 4


def test_texts_have_cls_and_no_trailing_sep(tokenizer):
    batch = tokenizer.encode_texts(["a red circle", "how many circles are there"])
    assert (batch.input_ids[:, 0] == tokenizer.cls_id).all()
    assert not (batch.input_ids == tokenizer.sep_id).any()
    assert batch.attention_mask[0].sum() == 4  # [CLS] a red circle
    assert batch.input_ids[0, 4:].eq(tokenizer.pad_id).all() and batch.attention_mask[0, 4:].eq(0).all()
    assert tokenizer.decode(batch.input_ids[0]) == "a red circle"


def test_truncation_counts_cls(tokenizer):
    batch = tokenizer.encode_texts(["a red circle to the left of a blue square"], max_length=4)
    assert batch.input_ids.shape == (1, 4) and tokenizer.decode(batch.input_ids[0]) == "a red circle"


def test_answers_end_with_sep(tokenizer):
    batch = tokenizer.encode_answers(["yes", "red circle"])
    ids = batch.input_ids.tolist()
    assert ids[0][:3] == [tokenizer.cls_id, ids[0][1], tokenizer.sep_id] and ids[0][3:] == [0]
    assert ids[1][0] == tokenizer.cls_id and ids[1][-1] == tokenizer.sep_id and ids.count(tokenizer.sep_id) == 0


def test_single_string_rejected(tokenizer):
    with pytest.raises(TypeError):
        tokenizer.encode_texts("a red circle")


def test_missing_tokenizer_dir_message(tmp_path):
    with pytest.raises(DataError, match=r"tokenizer \(data.tokenizer=.*\): .* holds none of vocab.txt, tokenizer.json"):
        load_tokenizer(tmp_path)


def test_pre_caption_as_tcl():
    assert pre_caption("A Dog's toy, (red)!  On  the grass-field/yard.\n") == "a dogs toy red on the grass field yard"
    assert pre_caption("<person> rides a horse") == "person rides a horse"
    assert pre_caption(" ".join(["w"] * 40), max_words=30) == " ".join(["w"] * 30)


def test_pre_question_keeps_double_spaces_like_tcl():
    assert pre_question("What's  the color?  ") == "whats  the color"
    assert pre_question("Is it left-most?") == "is it left most"


def test_a_missing_local_tokenizer_is_named_as_a_folder_not_a_hub_id(tmp_path):
    """A dataset folder without tokenizer/ and a path that does not exist say which folder and which setting,
    instead of the hub's "Repo id must be in the form ..." error."""
    from tcl.config import load_config
    from tcl.data.builders import build_tokenizer
    from tcl.data.tokenizer import load_tokenizer
    from tcl.errors import DataError

    for name in (str(tmp_path / "nowhere"), "data/elsewhere/tokenizer"):
        with pytest.raises(DataError, match=f"tokenizer \\(data.tokenizer={name}\\): {name} does not exist") as missing:
            load_tokenizer(name)
        assert "Repo id" not in str(missing.value)
    config = load_config(REPO / "configs/pretrain_tiny.yaml", [f"data.root={tmp_path}"])
    with pytest.raises(DataError, match="data.tokenizer is null, so the tokenizer is looked for beside the data") as gone:
        build_tokenizer(config)
    assert "tcl make-data" in str(gone.value) and "tcl fetch-pretrained" in str(gone.value)
