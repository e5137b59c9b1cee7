"""Retrieval recall on hand-made score matrices, the ITM/MLM probes, the COCO retrieval set and the CLI."""

import json

import pytest
import torch

from tcl.evaluation.retrieval import (RetrievalSet, mismatched_texts, positive_ranks, recall_at_k, rerank_top_k)


def test_perfect_scores_find_everything():
    scores = torch.eye(4)
    result = recall_at_k(scores, torch.arange(4))
    assert all(result[f"{d}_r{k}"] == 100.0 for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert result["r_mean"] == 100.0


def test_ranks_by_hand():
    # image 0: its text 0 is second (text 2 scores higher); image 1: first; image 2: third.
    scores = torch.tensor([[0.5, 0.1, 0.9],
                           [0.0, 0.8, 0.2],
                           [0.7, 0.6, 0.3]])
    ranks = positive_ranks(scores, torch.eye(3, dtype=torch.bool))
    assert ranks.tolist() == [1, 0, 2]
    result = recall_at_k(scores, torch.arange(3), ks=(1, 2, 3))
    assert result["i2t_r1"] == pytest.approx(100 / 3)
    assert result["i2t_r2"] == pytest.approx(200 / 3)
    assert result["i2t_r3"] == 100.0
    # text→image uses the columns: text 0 ranks image 2 (0.7) above image 0 (0.5); text 1 and 2 are first/third.
    assert result["t2i_r1"] == pytest.approx(100 / 3)


def test_ties_count_against_the_query():
    # A collapsed model scores everything alike: no query is found at rank 1, however lucky the sort order.
    result = recall_at_k(torch.zeros(5, 5), torch.arange(5), ks=(1, 4, 5))
    assert result["i2t_r1"] == 0.0 and result["t2i_r1"] == 0.0
    assert result["i2t_r4"] == 0.0
    assert result["i2t_r5"] == 100.0  # K = the gallery size always finds the positive
    # One tie with a single negative: rank 1, not 0.
    assert positive_ranks(torch.tensor([[0.5, 0.5, 0.1]]), torch.tensor([[True, False, False]])).item() == 1


def test_k_larger_than_the_gallery():
    scores = torch.tensor([[0.1, 0.9], [0.9, 0.1]])  # both images rank the wrong text first
    result = recall_at_k(scores, torch.arange(2), ks=(1, 10))
    assert result["i2t_r1"] == 0.0
    assert result["i2t_r10"] == 100.0


def test_several_captions_per_image():
    # Texts 0, 1 belong to image 0; texts 2, 3 to image 1.
    text_image = torch.tensor([0, 0, 1, 1])
    scores = torch.tensor([[0.2, 0.9, 0.8, 0.1],   # image 0: its text 1 is first
                           [0.9, 0.3, 0.2, 0.4]])  # image 1: text 0 first, its best (text 3) second
    result = recall_at_k(scores, text_image, ks=(1, 2))
    assert result["i2t_r1"] == 50.0
    assert result["i2t_r2"] == 100.0
    # text→image: text 0 → image 1 wins (0.9 > 0.2): miss; text 1 → image 0; text 2 → image 0 wins: miss; text 3 → 1.
    assert result["t2i_r1"] == 50.0
    # Ties among an image's own captions do not count against it.
    tied = torch.tensor([[0.5, 0.5, 0.1, 0.1], [0.1, 0.1, 0.5, 0.5]])
    assert recall_at_k(tied, text_image, ks=(1,))["i2t_r1"] == 100.0


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="one entry per text"):
        recall_at_k(torch.zeros(2, 3), torch.arange(2))
    with pytest.raises(ValueError, match="at least one positive"):
        positive_ranks(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]))


def test_rerank_top_k_replaces_only_the_top_candidates():
    """Both ways, only ITC's top-k pairs are re-scored, each pair once (by the image that holds it), the rest −inf."""
    itc = torch.tensor([[0.9, 0.8, 0.1, 0.0],
                        [0.0, 0.1, 0.2, 0.7]])
    calls = []

    def image_scores(j, texts):
        calls.append((j, texts.tolist()))
        return -texts.float() - 10 * j  # prefers the lower-ITC candidate of the two

    scores_i2t, scores_t2i = rerank_top_k(itc, 2, image_scores, torch.arange(2))
    # image 0: its top 2 texts (0, 1) and the texts whose top 2 images include it (all four: there are two images)
    assert calls == [(0, [0, 1, 2, 3]), (1, [0, 1, 2, 3])]
    assert scores_i2t[0, :2].tolist() == [0.0, -1.0] and torch.isinf(scores_i2t[0, 2:]).all()
    assert scores_i2t[1, 3] == -13.0 and scores_i2t[1, 2] == -12.0 and torch.isinf(scores_i2t[1, :2]).all()
    assert torch.equal(scores_t2i, torch.tensor([[0.0, -10.0], [-1.0, -11.0], [-2.0, -12.0], [-3.0, -13.0]]))
    only_top_1 = rerank_top_k(itc, 1, lambda j, texts: itc[j, texts], torch.arange(2))[1]
    assert only_top_1.isfinite().sum(dim=1).tolist() == [1, 1, 1, 1]  # each text keeps its best image only
    every = rerank_top_k(itc, 10, lambda j, texts: itc[j, texts], torch.arange(2))  # k above the gallery
    assert all(scores.isfinite().all() for scores in every)


def test_a_shard_scores_only_its_images():
    """A process holding image 1 of 2 scores only that image's pairs; the totals put the rest in place."""
    from tcl.evaluation.sharding import Shard

    itc = torch.tensor([[0.9, 0.8, 0.1], [0.0, 0.1, 0.7]])
    seen = []
    shard = Shard(1, 2, lambda tensor: seen.append(tensor.clone()) or tensor)
    scores_i2t, _ = rerank_top_k(itc, 1, lambda j, texts: torch.ones(len(texts)), torch.tensor([1]), shard)
    assert seen[0][0].eq(0).all() and seen[0][1].eq(1).any()  # image 0's row was left to its own process
    assert [shard.takes(position) for position in range(5)] == [False, True, False, True, False]
    with pytest.raises(ValueError, match="not within"):
        Shard(2, 2)


def test_mismatched_texts_never_describe_the_image():
    data = RetrievalSet(torch.zeros(3, 3, 4, 4), torch.zeros(4, 2, dtype=torch.long), torch.ones(4, 2),
                        torch.tensor([0, 0, 1, 2]), ["a red circle", "one shape", "a red circle", "two squares"])
    wrong = mismatched_texts(data, seed=0)
    for image, text in enumerate(wrong.tolist()):
        assert data.text_image[text] != image
        own = {data.texts[t] for t in range(4) if data.text_image[t] == image}
        assert data.texts[text] not in own
    assert wrong[1].item() == 3  # image 1's caption equals text 0 of image 0, so only text 3 qualifies


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shapes_root):
    """A 4-step pretraining run with the retrieval probe every 2 steps."""
    from tcl.engine.commands import pretrain

    out = tmp_path_factory.mktemp("retrieval_run") / "run"
    code = pretrain(["--config", "configs/pretrain_tiny.yaml", f"data.root={shapes_root}",
                          f"train.output_dir={out}", "train.max_steps=4", "train.batch_size=8",
                          "model.queue_size=64", "data.num_workers=0", "eval.every=2", "eval.retrieval_images=12",
                          "eval.retrieval_k_test=4"])
    assert code == 0
    return out


def test_pretraining_logs_the_probe(tiny_run):
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "eval/i2t_r1" in r]
    assert [r["step"] for r in evaluations] == [2, 4]
    for record in evaluations:
        for key in ("i2t_r1", "t2i_r10", "itc_i2t_r1", "itm_accuracy", "mlm_word_accuracy", "uniformity_image"):
            assert f"eval/{key}" in record
        assert 0.0 <= record["eval/itm_accuracy"] <= 100.0
        groups = [record[f"eval/mlm_{group}_accuracy"] for group in ("colour", "shape", "size")]  # listings: no numbers
        assert min(groups) - 1e-9 <= record["eval/mlm_word_accuracy"] <= max(groups) + 1e-9  # a weighted mean
    final = json.loads((tiny_run / "retrieval_val2014_12images_1caps.json").read_text())
    assert final["step"] == 4
    assert final["i2t_r1"] == evaluations[-1]["eval/i2t_r1"]


def test_evaluate_retrieval_command(tiny_run, capsys):
    from tcl.engine.commands import evaluate_retrieval

    code = evaluate_retrieval(["--run", str(tiny_run), "--max-images", "10", "--captions-per-image", "2",
                                    "--k-test", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "i2t_r1" in out and "retrieval_val2014_10images_2caps.json" in out
    results = json.loads((tiny_run / "retrieval_val2014_10images_2caps.json").read_text())
    assert set(results) >= {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "r_mean", "itm_accuracy"}


def test_evaluate_retrieval_names_a_missing_run(tmp_path, capsys):
    from tcl.engine.commands import evaluate_retrieval

    assert evaluate_retrieval(["--run", str(tmp_path / "nothing")]) == 2
    assert f"--run {tmp_path / 'nothing'}: no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert evaluate_retrieval(["--run", str(tmp_path / "empty")]) == 2
    assert "no config.yaml in it" in capsys.readouterr().err


def test_coco_retrieval_set_keeps_the_first_captions(shapes_root):
    from tcl.data.builders import build_tokenizer
    from tcl.config import load_config
    from tcl.evaluation.coco_sets import coco_retrieval_set

    config = load_config("configs/pretrain_tiny.yaml", [f"data.root={shapes_root}"])
    tokenizer = build_tokenizer(config)
    captions = json.loads((shapes_root / "annotations" / "captions_val2014.json").read_text())
    data = coco_retrieval_set(shapes_root / "annotations" / "captions_val2014.json", shapes_root / "images",
                              tokenizer, 64, max_images=5, captions_per_image=2)
    assert data.images.shape == (5, 3, 64, 64)
    assert data.text_image.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    first_image = min(image["id"] for image in captions["images"])
    first = [a["caption"] for a in captions["annotations"] if a["image_id"] == first_image][0]
    assert data.texts[0] == first.lower().replace(",", "").replace(".", "")


def test_masked_word_hits_fuse_each_caption_with_its_own_image():
    """Batches fuse only their captions' images, each projected once: the same logits as each caption with its
    image gathered, over batches that hold some images twice and others not at all."""
    from pathlib import Path

    from tcl.config import load_config
    from tcl.evaluation.retrieval import masked_word_hits
    from tcl.models import TCLPretrainModel

    config = load_config(Path(__file__).resolve().parents[1] / "configs/pretrain_tiny.yaml", ["model.queue_size=32"])
    torch.manual_seed(0)
    model = TCLPretrainModel(config.model, config.loss, 40).eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 40, (6, 7), generator=g)
    ids[:, 0] = 2
    data = RetrievalSet(torch.randn(4, 3, 64, 64, generator=g), ids, torch.ones(6, 7, dtype=torch.long),
                        torch.tensor([3, 0, 3, 1, 0, 3]), [f"caption {i}" for i in range(6)])
    words = ids[:, 1:4].unique().tolist()
    seen = []  # the fused states the MLM head reads, batch by batch
    head = model.mlm_head
    hook = head.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    got_ids, got_hits = masked_word_hits(model, data, words, mask_id=4, batch_size=5)
    hook.remove()
    image_embeds = model.encode_image(data.images)[0]
    expected_states, expected_hits = [], []
    for row, column in (torch.isin(ids, torch.tensor(words))).nonzero().tolist():
        masked = ids[row:row + 1].clone()
        masked[0, column] = 4
        hidden = model.fuse(model.text_encoder(masked, data.attention_mask[row:row + 1]),
                            data.attention_mask[row:row + 1], image_embeds[data.text_image[row:row + 1]])
        expected_states.append(hidden[0, column])
        expected_hits.append(bool(head(hidden[0, column]).argmax() == ids[row, column]))
    assert len(seen) > 1 and len(got_ids) == len(expected_hits) > 5
    torch.testing.assert_close(torch.cat(seen), torch.stack(expected_states), atol=1e-5, rtol=1e-4)
    assert got_hits.tolist() == expected_hits
