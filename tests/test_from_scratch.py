"""The from-scratch options of the tiny configs: init_scheme xavier_qk, feature_pool mean, ITM negatives."""

from pathlib import Path

import pytest
import torch

from tcl.config import load_config
from tcl.models import TCLPretrainModel
from tcl.models.bert import init_bert_weights
from tcl.models.pooling import pool_image, pool_text
from tcl.models.vision import build_vision_encoder

# The tiny configs add the region classification and grounding terms, which need boxes in every batch; these tests
# exercise the TCL terms (or sources without instances files) on their own.
NO_REGIONS = ("loss.region_class_weight=0", "loss.grounding_weight=0")

REPO = Path(__file__).resolve().parents[1]
VOCAB = 60


def config(*overrides: str):
    return load_config(REPO / "configs/pretrain_tiny.yaml", ["model.queue_size=32", "train.batch_size=8",
                                                             *NO_REGIONS, *overrides])


def model(*overrides: str) -> TCLPretrainModel:
    cfg = config(*overrides)
    torch.manual_seed(0)
    return TCLPretrainModel(cfg.model, cfg.loss, VOCAB)


def inputs(size: int = 8):
    g = torch.Generator().manual_seed(1)
    image = torch.randn(size, 3, 64, 64, generator=g)
    ids = torch.randint(5, VOCAB, (size, 10), generator=g)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[: size // 2, 6:] = 0
    ids[mask == 0] = 0
    return image, image + 0.1 * torch.randn(image.shape, generator=g), ids, mask


def test_xavier_qk_draws_only_queries_and_keys_wide():
    m = model("model.init_scheme=xavier_qk")
    layer = m.fusion_encoder.layer[0]
    for projection in (layer.attention.self, layer.crossattention.self):
        assert projection.query.weight.std() > 0.05 and projection.key.weight.std() > 0.05  # Xavier: ~0.1 at 128
        assert projection.value.weight.std().item() == pytest.approx(0.02, rel=0.1)  # BERT's N(0, 0.02)
    assert layer.output.dense.weight.std().item() == pytest.approx(0.02, rel=0.1)
    text_layer = m.text_encoder.encoder.layer[0].attention.self
    assert text_layer.query.weight.std() > 0.05 and text_layer.value.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_xavier_qk_in_the_vision_encoder():
    encoder = build_vision_encoder(config("model.init_scheme=xavier_qk").model)
    width = encoder.embed_dim
    qkv = encoder.blocks[0].attn.qkv.weight
    bound = (6.0 / (width + width)) ** 0.5
    assert qkv[:2 * width].abs().max() <= bound and qkv[:2 * width].std() > 0.05
    assert qkv[2 * width:].std() < 0.03  # values keep timm's N(0, 0.02)


def test_init_schemes_differ_only_where_they_say():
    torch.manual_seed(0)
    bert = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64))
    init_bert_weights(bert, "bert")
    assert bert[0].weight.std().item() == pytest.approx(0.02, rel=0.1) and bert[0].bias.abs().sum() == 0
    init_bert_weights(bert, "xavier")
    assert bert[0].weight.std() > 0.1


def test_mean_pooling_ignores_padding_and_the_image_class_token():
    embeds = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.equal(pool_text(embeds, mask, "cls"), embeds[:, 0])
    assert torch.allclose(pool_text(embeds, mask, "mean")[0], embeds[0, :2].mean(dim=0))
    assert torch.allclose(pool_text(embeds, mask, "mean")[1], embeds[1].mean(dim=0))
    assert torch.allclose(pool_image(embeds, "mean"), embeds[:, 1:].mean(dim=1))
    # Padding does not move a text's feature.
    m = model("model.feature_pool=mean").eval()
    image, _, ids, mask = inputs()
    padded_ids = torch.cat([ids, torch.zeros(8, 3, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(8, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        assert torch.allclose(m.encode_text(ids, mask)[1], m.encode_text(padded_ids, padded_mask)[1], atol=1e-5)


def test_the_paper_configs_keep_tcl():
    for name in ("pretrain_4m.yaml", "vqa.yaml"):
        cfg = load_config(REPO / "configs" / name)
        assert cfg.model.init_scheme == "bert" and cfg.model.feature_pool == "cls"
        assert cfg.loss.distill and cfg.loss.itm_negatives == "hard"
        assert not cfg.loss.skip_identical_captions and cfg.loss.itm_negative_pairs == "both"


def test_random_negatives_draw_itm_negatives_uniformly(monkeypatch):
    import tcl.models.pretrain as pretrain

    seen = []
    original = pretrain.sample_hard_negatives

    def spy(weights, generator=None):
        seen.append(weights.clone())
        return original(weights, generator)

    monkeypatch.setattr(pretrain, "sample_hard_negatives", spy)
    m = model("loss.itm_negatives=random")
    m(*inputs())
    off_diagonal = ~torch.eye(8, dtype=torch.bool)
    for weights in seen:
        assert torch.allclose(weights[off_diagonal], torch.full((56,), 1 / 8))
        assert (weights.diagonal() == 0).all()
    seen.clear()
    model("loss.itm_negatives=hard")(*inputs())
    assert not torch.allclose(seen[0][off_diagonal], torch.full((56,), 1 / 8))


@pytest.mark.parametrize("pairs", ["both", "half"])
def test_itm_negative_pairs_choose_which_negatives_are_fused(monkeypatch, pairs):
    import tcl.models.pretrain as pretrain

    drawn, fused = [], []
    original = pretrain.sample_hard_negatives
    monkeypatch.setattr(pretrain, "sample_hard_negatives", lambda w, g=None: drawn.append(original(w, g)) or drawn[-1])
    m = model(f"loss.itm_negative_pairs={pairs}")
    real_itm_logits = m.itm_logits
    monkeypatch.setattr(m, "itm_logits", lambda t, a, i, index=None: fused.append((t, a, i, index))
                        or real_itm_logits(t, a, i, index))
    m(*inputs())
    ((texts, masks, images, index),) = fused  # positives and negatives in one pass, each row naming its image
    negative_image, negative_text = drawn  # drawn per text, then per image
    own = torch.arange(8)
    assert images.shape[0] == 8 and torch.equal(index[:8], own)  # the positives first
    positive_texts = texts[:8]
    if pairs == "both":  # TCL: every text with a negative image, then every image with a negative text
        assert texts.shape[0] == 24
        assert torch.equal(index[8:16], negative_image) and torch.equal(texts[8:16], positive_texts)
        assert torch.equal(texts[16:], positive_texts[negative_text]) and torch.equal(index[16:], own)
    else:  # half the batch each way: as many negatives as positives
        assert texts.shape[0] == 16
        assert torch.equal(texts[8:12], positive_texts[negative_text[:4]]) and torch.equal(index[8:12], own[:4])
        assert torch.equal(texts[12:], positive_texts[4:]) and torch.equal(index[12:], negative_image[4:])
    assert torch.isfinite(m(*inputs()).losses["itm"])


def test_identical_captions_are_never_itm_negatives(monkeypatch):
    import tcl.models.pretrain as pretrain

    seen = []
    original = pretrain.sample_hard_negatives
    monkeypatch.setattr(pretrain, "sample_hard_negatives", lambda w, g=None: seen.append(w.clone()) or original(w, g))
    image, image_aug, ids, mask = inputs()
    ids[3], mask[3] = ids[0], mask[0]  # samples 0 and 3 share a caption
    m = model("loss.skip_identical_captions=true", "loss.itm_negatives=hard")
    m(image, image_aug, ids, mask)
    assert all(w[0, 3] == 0 and w[3, 0] == 0 for w in seen)
    assert all(w[0, 1] > 0 for w in seen)
    seen.clear()
    model("loss.skip_identical_captions=false", "loss.itm_negatives=hard")(image, image_aug, ids, mask)  # TCL's
    assert all(w[0, 3] > 0 for w in seen)
    keys = pretrain.caption_keys(ids)
    assert keys[0] == keys[3] and keys[0] != keys[1]


def test_copies_of_a_caption_are_no_contrastive_negatives():
    from tcl.losses.objectives import ContrastiveObjective, contrastive_loss

    sim = torch.tensor([[0.9, 0.9, 0.1], [0.2, 0.8, 0.3]])
    positive = torch.tensor([0, 1])
    exclude = torch.tensor([[False, True, False], [False, False, False]])  # column 1 copies row 0's caption
    with_copy = contrastive_loss(sim[:1], positive[:1], 0.1)
    without = contrastive_loss(sim[:1], positive[:1], 0.1, exclude=exclude[:1])
    assert without < with_copy
    assert without.item() == pytest.approx(contrastive_loss(sim[:1, [0, 2]], positive[:1], 0.1).item(), rel=1e-6)
    for name in ("debiased_neg", "debiased_pos"):  # N counts only the real negatives
        objective = ContrastiveObjective(name)
        expected = contrastive_loss(sim[:1, [0, 2]], positive[:1], 0.1, objective=objective)
        got = contrastive_loss(sim[:1], positive[:1], 0.1, objective=objective, exclude=exclude[:1])
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    soft = torch.softmax(sim / 0.1, dim=1)
    distilled = contrastive_loss(sim, positive, 0.1, soft_targets=soft, alpha=0.4, exclude=exclude)
    assert torch.isfinite(distilled)


def test_the_caption_queue_follows_the_feature_queues():
    m = model("loss.skip_identical_captions=true")
    image, image_aug, ids, mask = inputs()
    m(image, image_aug, ids, mask)
    from tcl.models.pretrain import caption_keys

    assert torch.equal(m.caption_queue.keys[:8], caption_keys(ids))
    assert (m.caption_queue.keys[8:] == -1).all() and int(m.caption_queue.ptr) == int(m.text_queue.ptr) == 8
    assert "caption_queue.keys" in m.state_dict()
    assert "caption_queue.keys" not in model("loss.skip_identical_captions=false").state_dict()
