"""Swapped-word captions (the word classes of content-word masking) and the attribute-binding probe."""

from pathlib import Path

import pytest
import torch

from tcl.config import load_config
from tcl.errors import ConfigError
from tcl.models.word_swap import WordSwapper

# The tiny configs add the region classification and grounding terms, which need boxes in every batch; these tests
# exercise the TCL terms (or sources without instances files) on their own.
NO_REGIONS = ("loss.region_class_weight=0", "loss.grounding_weight=0")

REPO = Path(__file__).resolve().parents[1]

COLOURS, SHAPES = [10, 11, 12], [20, 21]


def small_model(override: str):
    """The tiny pretraining config at 32 px with a short queue and one override, built with the test's word classes."""
    from tcl.models import TCLPretrainModel

    cfg = load_config(REPO / "configs/pretrain_tiny.yaml", ["model.queue_size=32", "model.image_size=32",
                                                            "model.patch_size=16", *NO_REGIONS, override])
    torch.manual_seed(0)
    return cfg, TCLPretrainModel(cfg.model, cfg.loss, 40, swap_word_ids=[COLOURS, SHAPES])


def test_one_word_changes_to_another_of_its_class():
    swapper = WordSwapper([COLOURS, SHAPES], vocab_size=30)
    ids = torch.tensor([[2, 5, 10, 20, 7, 0], [2, 5, 6, 7, 0, 0], [2, 12, 12, 0, 0, 0]])
    mask = (ids != 0).long()
    for seed in range(20):
        swapped, changed = swapper(ids, mask, torch.Generator().manual_seed(seed))
        assert changed.tolist() == [True, False, True]
        assert torch.equal(swapped[1], ids[1])  # no class word: unchanged
        for row in (0, 2):
            diff = (swapped[row] != ids[row]).nonzero().flatten().tolist()
            assert len(diff) == 1
            old, new = int(ids[row, diff[0]]), int(swapped[row, diff[0]])
            assert old != new and any(old in c and new in c for c in (COLOURS, SHAPES))
        assert torch.equal(swapped[:, 0], ids[:, 0]) and (swapped[mask == 0] == 0).all()


def test_every_other_word_of_the_class_is_drawn():
    swapper = WordSwapper([COLOURS], vocab_size=30)
    ids = torch.tensor([[2, 11]] * 400)
    swapped, _ = swapper(ids, torch.ones_like(ids), torch.Generator().manual_seed(0))
    counts = torch.bincount(swapped[:, 1], minlength=13)
    assert counts[11] == 0 and counts[10] > 150 and counts[12] > 150


def test_bad_classes_are_refused():
    with pytest.raises(ValueError, match="two words"):
        WordSwapper([[3]], vocab_size=10)
    with pytest.raises(ValueError, match="shares words"):
        WordSwapper([[3, 4], [4, 5]], vocab_size=10)
    with pytest.raises(ConfigError, match="swap_word_classes"):
        from tcl.config import validate

        validate(load_config(REPO / "configs/pretrain_tiny.yaml", ["loss.mlm_content_probability=0.5",
                                                                    "loss.swap_word_classes=[]"]))


def test_the_tiny_config_swaps_the_generated_worlds_words():
    from tcl.data.shapes import CONTENT_WORD_GROUPS

    classes = load_config(REPO / "configs/pretrain_tiny.yaml").loss.swap_word_classes
    where = [("left", "right", "center"), ("top", "bottom"), ("above", "below")]  # position words, masked as often
    assert sorted(map(tuple, classes)) == sorted([*(c for group in CONTENT_WORD_GROUPS.values() for c in group),
                                                  *where])


def test_content_word_masking_masks_the_class_words_more_often(monkeypatch):
    """loss.mlm_content_probability: the MLM labels fall on the class words far more often than BERT's 15 %."""
    import tcl.models.pretrain as pretrain_module
    from tcl.config import validate
    from tcl.models import TCLPretrainModel

    with pytest.raises(ConfigError, match="mlm_content_probability"):
        validate(load_config(REPO / "configs/pretrain_tiny.yaml", ["loss.mlm_content_probability=0.5",
                                                                    "loss.swap_word_classes=[]"]))
    cfg, model = small_model("loss.mlm_content_probability=1.0")
    labels_seen = []
    original = pretrain_module.mlm_loss
    monkeypatch.setattr(pretrain_module, "mlm_loss",
                        lambda logits, labels, *rest: labels_seen.append(labels.clone()) or original(logits, labels,
                                                                                                      *rest))
    ids = torch.tensor([[2, 5, 10, 20, 6, 7], [2, 11, 5, 21, 6, 0]])
    out = model(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), ids, (ids != 0).long())
    assert torch.isfinite(out.losses["mlm"])
    labelled = labels_seen[-1].flatten().tolist()  # every class word is chosen with probability 1
    assert sorted(w for w in labelled if w in COLOURS + SHAPES) == [10, 11, 20, 21]
    plain = TCLPretrainModel(cfg.model, cfg.loss, 40)  # no word ids: BERT's masking
    assert torch.isfinite(plain(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), ids,
                                (ids != 0).long()).losses["mlm"])
