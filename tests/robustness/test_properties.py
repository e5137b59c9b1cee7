"""Property-based checks (hypothesis) on everything that takes arbitrary user text or bytes: answer normalisation
and the official accuracy, question cleaning and tokenisation of any unicode, config overrides, image decoding."""

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tcl.config import load_config
from tcl.data.images import as_rgb_image
from tcl.text_cleaning import pre_caption, pre_question
from tcl.data.tokenizer import TclTokenizer, load_tokenizer
from tcl.errors import BadSampleError, ConfigError
from tcl.evaluation import normalize_answer, vqa_accuracy

# Words and marks that the official normalisation treats specially, mixed into answer-like strings.
SPECIAL = ["a", "an", "the", "none", "zero", "one", "two", "ten", "dont", "don't", "isnt", "yall'll", "3.5", "1,000",
           "a.m.", "yes.", "no!", "(left)", "#", "@", "-", "'", ",", ".", "?", "10:30", "1/2", "x", " ", "\t", "\n"]
answer_like = st.lists(st.one_of(st.sampled_from(SPECIAL), st.text(max_size=6)), max_size=8).map(" ".join)
any_text = st.one_of(st.text(max_size=200), answer_like)
common = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@common
@given(any_text)
def test_normalisation_never_fails_and_is_idempotent(text):
    once = normalize_answer(text)
    assert isinstance(once, str) and once == once.strip()
    assert normalize_answer(once) == once


@common
@given(any_text, st.lists(any_text, min_size=1, max_size=10))
def test_accuracy_is_a_fraction_and_unanimous_humans_give_full_credit(prediction, humans):
    assert 0.0 <= vqa_accuracy(prediction, humans) <= 1.0
    assert vqa_accuracy(prediction, [prediction] * 10) == 1.0


@common
@given(answer_like, st.integers(0, 10))
def test_accuracy_grows_with_the_number_of_agreeing_humans(prediction, agreeing):
    others = ["zzz-other-answer"] * 10
    fewer = [prediction] * agreeing + others[agreeing:]
    more = [prediction] * min(agreeing + 1, 10) + others[min(agreeing + 1, 10):]
    assert vqa_accuracy(prediction, fewer) <= vqa_accuracy(prediction, more)


@pytest.fixture(scope="module")
def tokenizer(shapes_root):
    return TclTokenizer(load_tokenizer(shapes_root / "tokenizer"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=300), min_size=1, max_size=4), st.integers(2, 40))
def test_any_unicode_question_tokenises_within_the_vocabulary(tokenizer, texts, max_length):
    questions = [pre_question(t, 50) for t in texts]
    assert all(isinstance(q, str) for q in questions) and all(isinstance(pre_caption(t, 30), str) for t in texts)
    encoded = tokenizer.encode_texts(questions, max_length)
    assert encoded.input_ids.shape == encoded.attention_mask.shape
    assert encoded.input_ids.shape[0] == len(texts) and encoded.input_ids.shape[1] <= max_length
    assert (encoded.input_ids[:, 0] == tokenizer.cls_id).all()
    assert int(encoded.input_ids.min()) >= 0 and int(encoded.input_ids.max()) < len(tokenizer)
    assert (encoded.attention_mask.sum(dim=1) >= 1).all()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=60), min_size=1, max_size=4))
def test_any_unicode_answer_ends_with_sep(tokenizer, answers):
    encoded = tokenizer.encode_answers(answers)
    lengths = encoded.attention_mask.sum(dim=1)
    for row, length in zip(encoded.input_ids, lengths):
        assert row[0] == tokenizer.cls_id and row[int(length) - 1] == tokenizer.sep_id


@common
@given(st.text(max_size=80))
def test_any_override_either_loads_or_fails_with_a_config_error(override):
    try:
        load_config(None, [override])
    except ConfigError as error:
        assert str(error)


def png_bytes(width: int, height: int, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=2000),
                 st.builds(lambda data, cut: data[:cut],
                           st.builds(png_bytes, st.integers(1, 64), st.integers(1, 64),
                                     st.sampled_from(["1", "L", "P", "RGB", "RGBA", "I;16", "LA"])),
                           st.integers(0, 400))))
def test_any_bytes_decode_to_rgb_or_a_bad_sample_error(data):
    try:
        image = as_rgb_image(data, max_pixels=100_000)
    except BadSampleError as error:
        assert error.reason in {"corrupt image", "empty image file", "image too large", "unsupported image"}
    else:
        assert image.mode == "RGB" and image.width * image.height <= 100_000
