"""Swapped-word captions: the ITM negatives of ``loss.itm_swap_negatives`` and the attribute-binding probe."""

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

        validate(load_config(REPO / "configs/pretrain_tiny.yaml", ["loss.itm_swap_negatives=0.5",
                                                                    "loss.swap_word_classes=[]"]))


def test_itm_negatives_include_the_swapped_captions(monkeypatch):
    from tcl.models import TCLPretrainModel

    cfg, model = small_model("loss.itm_swap_negatives=1.0")
    seen = []
    original = model.itm_logits
    monkeypatch.setattr(model, "itm_logits", lambda t, m, i, index=None: seen.append((t.shape[0], m.clone()))
                        or original(t, m, i, index))
    ids = torch.tensor([[2, 5, 10, 20, 0], [2, 6, 7, 8, 9], [2, 11, 5, 0, 0], [2, 5, 5, 21, 6]])
    mask = (ids != 0).long()
    encoded = []
    original_text = model.text_encoder.forward
    monkeypatch.setattr(model.text_encoder, "forward", lambda i, m: encoded.append(i.clone()) or original_text(i, m))
    images = torch.randn(4, 3, 32, 32)
    out = model(images, images, ids, mask)
    assert torch.isfinite(out.losses["itm"])
    swapped = [batch for batch in encoded if batch.shape[0] == 3]  # rows 0, 2, 3 hold a class word
    assert len(swapped) == 1 and ((swapped[0] != ids[[0, 2, 3]]).sum(dim=1) == 1).all()
    # [positives | each text with a negative image | each image with a negative text]: the swapped rows' masks
    negatives_mask = seen[-1][1][8:]
    assert torch.equal(negatives_mask[[0, 2, 3]], mask[[0, 2, 3]])
    with pytest.raises(ValueError, match="swap_word_ids"):
        TCLPretrainModel(cfg.model, cfg.loss, 40)(images, images, ids, mask)


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


def test_cma_own_negative_is_one_more_i2t_column():
    """cma_loss's own_text_negatives: the i2t row gets exactly one more negative logit (its own), rows not used get
    none, t2i is untouched and the distillation targets give the new column no mass."""
    from tcl.losses.contrastive_terms import cma_loss
    from tcl.losses.objectives import contrastive_loss

    torch.manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape), dim=-1)  # noqa: E731
    image, text, image_all, text_all, own = unit(4, 8), unit(4, 8), unit(10, 8), unit(10, 8), unit(4, 8)
    used = torch.tensor([True, False, True, True])
    positive = torch.arange(4)
    for objective in ("infonce", "debiased_neg", "debiased_pos"):
        i2t, t2i = cma_loss(image, text, image_all, text_all, 0.1, objective=objective, own_text_negatives=own,
                            own_text_negative_used=used)
        plain_i2t, plain_t2i = cma_loss(image, text, image_all, text_all, 0.1, objective=objective)
        sim = torch.cat([image @ text_all.T, (image * own).sum(1, keepdim=True)], dim=1)
        exclude = torch.zeros(4, 11, dtype=torch.bool)
        exclude[1, -1] = True
        expected = contrastive_loss(sim, positive, 0.1, objective=objective, exclude=exclude)
        assert torch.allclose(i2t, expected) and torch.equal(t2i, plain_t2i) and not torch.allclose(i2t, plain_i2t)
    # Distillation: the soft targets of the first 10 columns stay those of plain CMA, the own column gets none.
    i2t = cma_loss(image, text, image_all, text_all, 0.1, alpha=1.0, image_feat_m=image, text_feat_m=text,
                   own_text_negatives=own, own_text_negative_used=used)[0]
    soft = torch.softmax(image @ text_all.T / 0.1, dim=1)
    logits = torch.cat([image @ text_all.T, (image * own).sum(1, keepdim=True)], 1) / 0.1
    log_probs = torch.log_softmax(logits.masked_fill(exclude, float("-inf")), 1)  # row 1 has no own negative
    assert torch.allclose(i2t, -(soft * log_probs[:, :10]).sum(1).mean(), atol=1e-6)


def test_cma_swap_negatives_encode_the_swapped_captions_with_gradient(monkeypatch):
    from tcl.config import validate

    with pytest.raises(ConfigError, match="cma_swap_negatives"):
        validate(load_config(REPO / "configs/pretrain_tiny.yaml", ["loss.cma_swap_negatives=0.5",
                                                                    "loss.swap_word_classes=[]"]))
    with pytest.raises(ConfigError, match="must lie in"):
        validate(load_config(REPO / "configs/pretrain_tiny.yaml", ["loss.cma_swap_negatives=1.5"]))
    ids = torch.tensor([[2, 5, 10, 20, 0], [2, 6, 7, 8, 9], [2, 11, 5, 0, 0], [2, 5, 5, 21, 6]])
    mask = (ids != 0).long()
    images = torch.randn(4, 3, 32, 32)
    losses = {}
    for share in (0.0, 1.0):
        cfg, model = small_model(f"loss.cma_swap_negatives={share}")
        encoded = []
        original_text = model.text_encoder.forward

        def recording(i, m, f=original_text, seen=encoded):
            out = f(i, m)
            seen.append((i.clone(), out.requires_grad))
            return out

        monkeypatch.setattr(model.text_encoder, "forward", recording)
        torch.manual_seed(1)
        out = model(images, images, ids, mask)
        losses[share] = out.losses
        class_words = torch.tensor(COLOURS + SHAPES)
        # One more online pass, with gradient: the captions with one class word changed for another (MLM's masked
        # copy changes words too, to [MASK] or random ids).
        swapped = [grad for batch, grad in encoded
                   if not torch.equal(batch, ids) and torch.isin(batch[batch != ids], class_words).all()]
        assert swapped == ([True] if share else [])
    assert torch.equal(losses[0.0]["t2i"], losses[1.0]["t2i"])
    assert losses[1.0]["i2t"] > losses[0.0]["i2t"]  # a negative more in every row with a class word
