"""The answer-decoder head: causal decoding, the weighted sequence loss with distillation, top-k ranking, and its
initialisation from the pretrained fusion layers."""

import math
from pathlib import Path

import pytest
import torch

from tcl.config import load_config
from tcl.models import TCLPretrainModel
from tcl.models.answer_decoder import (AnswerTargets, causal_mask, rank_candidates, sequence_distillation,
                                       sequence_nll, weighted_answer_loss)
from tcl.models.vqa import TCLVQAModel

REPO = Path(__file__).resolve().parents[1]
VOCAB, ANSWERS = 40, 6
CLS, SEP = 2, 3


def config(*overrides):
    return load_config(REPO / "configs/vqa_tiny.yaml", ["vqa.head=decoder", *overrides])


def questions(batch=3, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, 7), generator=g)
    ids[:, 0] = CLS
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    return torch.randn(batch, 3, size, size, generator=g), ids, mask


def candidates():
    """Six answers of one or two word pieces: ``[CLS] a.. [SEP] [PAD]``."""
    rows = [[CLS, 10, SEP, 0], [CLS, 11, SEP, 0], [CLS, 10, 12, SEP], [CLS, 13, SEP, 0], [CLS, 14, 15, SEP],
            [CLS, 11, 16, SEP]]
    ids = torch.tensor(rows)
    return ids, (ids != 0).long()


def targets():
    """Question 0 has two answers, question 1 one, question 2 three."""
    ids, mask = candidates()
    pick = [0, 2, 1, 3, 4, 5]
    return AnswerTargets(ids[pick], mask[pick], torch.tensor([0.7, 0.3, 1.0, 0.5, 0.3, 0.2]),
                         torch.tensor([2, 1, 3]))


def test_causal_mask_hides_the_future_and_padding():
    mask = causal_mask(torch.tensor([[1, 1, 1, 0]]))[0, 0]
    assert mask.tolist() == [[True, False, False, False], [True, True, False, False], [True, True, True, False],
                             [True, True, True, False]]


def test_decoder_is_causal():
    torch.manual_seed(0)
    model = TCLVQAModel(config().model, VOCAB, ANSWERS, head="decoder").eval()
    image, ids, mask = questions(batch=1)
    states = model.question_states(image, ids, mask)
    answer = torch.tensor([[CLS, 10, 12, SEP]])
    changed = answer.clone()
    changed[0, 2] = 20
    one = model.text_decoder(answer, torch.ones_like(answer), states, mask)
    two = model.text_decoder(changed, torch.ones_like(changed), states, mask)
    assert torch.allclose(one[:, :2], two[:, :2], atol=1e-6)  # positions before the change see the same prefix
    assert not torch.allclose(one[:, 2:], two[:, 2:])


def test_sequence_nll_sums_next_token_log_probabilities():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 9, generator=g)
    ids = torch.tensor([[CLS, 5, 6, SEP], [CLS, 7, SEP, 0]])
    mask = (ids != 0).long()
    log_p = torch.log_softmax(logits, dim=-1)
    expected = [-(log_p[0, 0, 5] + log_p[0, 1, 6] + log_p[0, 2, SEP]), -(log_p[1, 0, 7] + log_p[1, 1, SEP])]
    assert sequence_nll(logits, ids, mask).tolist() == pytest.approx([float(e) for e in expected], rel=1e-6)


def test_weighted_loss_with_distillation_matches_the_formula():
    g = torch.Generator().manual_seed(2)
    ids, mask = candidates()
    logits, teacher = torch.randn(6, 4, VOCAB, generator=g), torch.randn(6, 4, VOCAB, generator=g)
    t = AnswerTargets(ids, mask, torch.rand(6, generator=g), torch.tensor([2, 4]))
    nll = sequence_nll(logits, ids, mask)
    soft = torch.softmax(teacher[:, :-1], dim=-1)  # over the vocabulary (dim=-1), not TCL's dim=1
    ce = (-(soft * torch.log_softmax(logits[:, :-1], dim=-1)).sum(-1) * mask[:, 1:]).sum(1)
    assert torch.allclose(sequence_distillation(logits, teacher, mask), ce)
    alpha = 0.4
    expected = (t.weights * ((1 - alpha) * nll + alpha * ce)).sum() / 2
    assert weighted_answer_loss(logits, t, 2, teacher, alpha).item() == pytest.approx(expected.item(), rel=1e-6)
    assert weighted_answer_loss(logits, t, 2, teacher, 0.0).item() == pytest.approx(
        ((t.weights * nll).sum() / 2).item(), rel=1e-6)


def brute_force_log_likelihoods(model, image, ids, mask):
    """log p(answer | question) of every candidate, one teacher-forced pass each."""
    states = model.question_states(image, ids, mask)
    cand_ids, cand_mask = candidates()
    rows = []
    for b in range(states.shape[0]):
        rep = states[b:b + 1].expand(len(cand_ids), -1, -1)
        logits = model.text_decoder(cand_ids, cand_mask, rep, mask[b:b + 1].expand(len(cand_ids), -1))
        log_p = torch.log_softmax(logits, dim=-1)
        first = log_p[:, 0].gather(1, cand_ids[:, 1:2]).squeeze(1)
        rows.append((-sequence_nll(logits, cand_ids, cand_mask), first))
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


@torch.no_grad()
def test_ranking_scores_are_sequence_log_likelihoods_of_the_top_k_first_tokens():
    torch.manual_seed(3)
    model = TCLVQAModel(config().model, VOCAB, ANSWERS, head="decoder").eval()
    image, ids, mask = questions()
    full, first = brute_force_log_likelihoods(model, image, ids, mask)
    states = model.question_states(image, ids, mask)
    top, scores = rank_candidates(model.text_decoder, states, mask, *candidates(), k=3)
    for b in range(3):
        expected_set = set(first[b].topk(3).indices.tolist())
        assert set(top[b].tolist()) == expected_set
        assert scores[b].tolist() == pytest.approx(full[b, top[b]].tolist(), abs=1e-5)
        assert scores[b].tolist() == sorted(scores[b].tolist(), reverse=True)
    _, tcl_scores = rank_candidates(model.text_decoder, states, mask, *candidates(), k=ANSWERS, score="tcl")
    top_all, seq_scores = rank_candidates(model.text_decoder, states, mask, *candidates(), k=ANSWERS)
    assert set(top_all[0].tolist()) == set(range(ANSWERS))
    expected_tcl = sorted((full[0] + first[0]).tolist(), reverse=True)  # first token counted twice
    assert tcl_scores[0].tolist() == pytest.approx(expected_tcl, abs=1e-5)
    # answer_scores puts the ranked scores in place and -inf on candidates outside the top k
    matrix = model.answer_scores(image, ids, mask, candidates(), k=3)
    assert matrix.shape == (3, ANSWERS) and (matrix == float("-inf")).sum(dim=1).tolist() == [3, 3, 3]
    assert torch.allclose(matrix.gather(1, top), scores)


def test_decoder_trains_with_momentum_distillation():
    torch.manual_seed(4)
    model = TCLVQAModel(config().model, VOCAB, ANSWERS, head="decoder", distill=True)
    before = model.momentum["text_decoder"].cls.predictions.bias.clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    out = model(*questions(), targets=targets(), alpha=0.4)
    out.loss.backward()
    assert torch.isfinite(out.loss) and set(out.losses) == {"answer_nll"}
    assert all(p.grad is not None for name, p in model.named_parameters() if p.requires_grad)
    assert not any(p.requires_grad for p in model.momentum.parameters())
    optimizer.step()
    optimizer.zero_grad()
    model(*questions(), targets=targets(), alpha=0.4, step_boundary=True)  # EMA update before the teacher pass
    after = model.momentum["text_decoder"].cls.predictions.bias
    online = model.text_decoder.cls.predictions.bias
    expected = before + (1 - model.momentum.momentum) * (online.detach() - before)
    assert torch.allclose(after, expected, atol=1e-7) and not torch.equal(after, before)


def test_decoder_learns_to_rank_the_right_answer_first():
    """A few steps on one batch: the weighted NLL falls and ranking returns each question's heaviest answer."""
    torch.manual_seed(5)
    model = TCLVQAModel(config("model.hidden_dropout=0.0", "model.attention_dropout=0.0").model, VOCAB, ANSWERS,
                        head="decoder")
    image, ids, mask = questions()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = model(image, ids, mask, targets=targets()).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    best = model.answer_scores(image, ids, mask, candidates(), k=4).argmax(dim=1)
    # heaviest answer: question 0 → row 0 (candidate 0), question 1 → candidate 1, question 2 → candidate 3
    assert best.tolist() == [0, 1, 3]


def test_decoder_is_initialised_from_the_pretrained_fusion_layers():
    pretrain_config = load_config(REPO / "configs/pretrain_tiny.yaml")
    torch.manual_seed(6)
    pretrained = TCLPretrainModel(pretrain_config.model, pretrain_config.loss, VOCAB)
    model = TCLVQAModel(config("model.image_size=96").model, VOCAB, ANSWERS, head="decoder", distill=True)
    left = model.load_pretrained_encoders(pretrained.state_dict())
    assert left == []  # nothing stays random: image width = text width in the tiny config
    decoder = model.text_decoder
    for j, fusion in enumerate(pretrained.fusion_encoder.layer):
        for name, tensor in fusion.state_dict().items():
            assert torch.equal(decoder.bert.encoder.layer[j].state_dict()[name], tensor), (j, name)
    assert torch.equal(decoder.bert.embeddings.word_embeddings.weight,
                       pretrained.text_encoder.embeddings.word_embeddings.weight)
    assert torch.equal(decoder.cls.predictions.transform.dense.weight,
                       pretrained.mlm_head.predictions.transform.dense.weight)
    assert decoder.cls.predictions.decoder.weight is decoder.bert.embeddings.word_embeddings.weight  # still tied
    for name, tensor in model.momentum.models.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


def test_cross_attention_of_another_width_stays_random_with_a_warning(caplog):
    pretrain_config = load_config(REPO / "configs/pretrain_tiny.yaml", ["model.vision_width=64", "model.vision_heads=2"])
    pretrained = TCLPretrainModel(pretrain_config.model, pretrain_config.loss, VOCAB)
    model = TCLVQAModel(config("model.vision_width=64", "model.vision_heads=2").model, VOCAB, ANSWERS,
                        head="decoder")
    left = model.load_pretrained_encoders(pretrained.state_dict())
    assert left and all(".crossattention.self.key." in n or ".crossattention.self.value." in n for n in left)
    assert "keep their random init" in caplog.text


def test_decoder_without_targets_points_to_answer_scores():
    model = TCLVQAModel(config().model, VOCAB, ANSWERS, head="decoder")
    with pytest.raises(TypeError, match="answer_scores"):
        model(*questions())
    with pytest.raises(ValueError, match="candidates"):
        model.answer_scores(*questions())


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="unknown VQA head"):
        TCLVQAModel(config().model, VOCAB, ANSWERS, head="generator")


@torch.no_grad()
def test_first_token_softmax_is_over_the_vocabulary():
    """Step 1 reads p(first token) from a softmax over the whole vocabulary, so it sums to at most 1 over answers."""
    torch.manual_seed(7)
    model = TCLVQAModel(config().model, VOCAB, ANSWERS, head="decoder").eval()
    image, ids, mask = questions(batch=1)
    _, first = brute_force_log_likelihoods(model, image, ids, mask)
    distinct_first = {int(t): float(lp) for t, lp in zip(candidates()[0][:, 1], first[0])}
    assert sum(math.exp(v) for v in distinct_first.values()) <= 1.0 + 1e-6
