"""The VQA model with the classifier head: forward/backward, soft-score loss, loading a pretraining checkpoint at
another resolution."""

from pathlib import Path

import pytest
import torch

from tcl.config import load_config
from tcl.models import TCLPretrainModel
from tcl.models.surgery import WeightsMismatch
from tcl.models.vqa import TCLVQAModel

REPO = Path(__file__).resolve().parents[1]
VOCAB, ANSWERS = 60, 12


def config(*overrides):
    return load_config(REPO / "configs/vqa_tiny.yaml", list(overrides))


def inputs(batch=4, size=64):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (batch, 9), generator=g)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    return torch.randn(batch, 3, size, size, generator=g), ids, mask


def test_forward_backward_and_bce_on_soft_scores():
    torch.manual_seed(0)
    model = TCLVQAModel(config().model, VOCAB, ANSWERS)
    targets = torch.zeros(4, ANSWERS)
    targets[:, 3] = 1.0
    targets[0, 5] = 0.3
    out = model(*inputs(), targets=targets)
    assert out.logits.shape == (4, ANSWERS) and torch.isfinite(out.loss)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, targets, reduction="sum") / 4
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_loads_pretraining_encoders_and_resamples_position_embeddings():
    pretrain_config = load_config(REPO / "configs/pretrain_tiny.yaml")
    torch.manual_seed(1)
    pretrained = TCLPretrainModel(pretrain_config.model, pretrain_config.loss, VOCAB)
    model = TCLVQAModel(config("model.image_size=96").model, VOCAB, ANSWERS)
    left = model.load_pretrained_encoders(pretrained.state_dict())
    assert left and all(name.startswith("answer_head.") for name in left)
    assert model.vision_encoder.pos_embed.shape[1] == 1 + (96 // 8) ** 2
    assert torch.equal(model.vision_encoder.pos_embed[:, 0], pretrained.vision_encoder.pos_embed[:, 0])
    assert torch.equal(model.fusion_encoder.layer[0].crossattention.self.key.weight,
                       pretrained.fusion_encoder.layer[0].crossattention.self.key.weight)
    assert model(*inputs(size=96)).logits.shape == (4, ANSWERS)


def test_mismatched_checkpoint_is_refused():
    model = TCLVQAModel(config().model, VOCAB, ANSWERS)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fusion_encoder.layer.1.")}
    with pytest.raises(WeightsMismatch, match=r"do not fit the model \(missing \['fusion_encoder\.layer\.1\."):
        model.load_pretrained_encoders(state)


def test_freeze_vision():
    model = TCLVQAModel(config().model, VOCAB, ANSWERS)
    model.freeze_vision()
    assert not any(p.requires_grad for p in model.vision_encoder.parameters())
    assert all(p.requires_grad for p in model.answer_head.parameters())
    # Fixed in eval mode too: the convolutional stem's BatchNorm statistics do not move while the rest trains.
    model.train()
    assert not model.vision_encoder.training and model.answer_head.training


def test_convolutional_stem_keeps_the_token_grid_and_loads_across_resolutions():
    from tcl.models.vision import ConvStemPatchEmbed

    pretrain_config = load_config(REPO / "configs/pretrain_tiny.yaml", ["model.vision_stem=conv"])
    torch.manual_seed(2)
    pretrained = TCLPretrainModel(pretrain_config.model, pretrain_config.loss, VOCAB)
    assert isinstance(pretrained.vision_encoder.patch_embed, ConvStemPatchEmbed)
    model = TCLVQAModel(config("model.vision_stem=conv", "model.image_size=96").model, VOCAB, ANSWERS)
    model.load_pretrained_encoders(pretrained.state_dict())
    stem = model.vision_encoder.patch_embed.proj
    assert torch.equal(stem[0].weight, pretrained.vision_encoder.patch_embed.proj[0].weight)
    assert torch.equal(stem[1].running_var, pretrained.vision_encoder.patch_embed.proj[1].running_var)
    out = model(*inputs(size=96), targets=torch.zeros(4, ANSWERS))
    assert out.logits.shape == (4, ANSWERS)
    out.loss.backward()
    assert stem[0].weight.grad is not None
    with pytest.raises(ValueError, match="power-of-two"):
        TCLVQAModel(config("model.vision_stem=conv", "model.patch_size=6", "model.image_size=60").model, VOCAB,
                    ANSWERS)


def test_sincos_position_embeddings_encode_the_patch_grid():
    model = TCLVQAModel(config("model.pos_embed_init=sincos").model, VOCAB, ANSWERS)
    pos = model.vision_encoder.pos_embed[0]
    assert torch.equal(pos[0], torch.zeros_like(pos[0]))  # the class token has no position
    grid = pos[1:].reshape(8, 8, -1)
    # Amplitude 1 (sin/cos), far above timm's N(0, 0.02); every patch has its own code, neighbours are closer.
    assert pos[1:].abs().max() <= 1.0 + 1e-6 and pos[1:].std() > 0.3
    assert torch.cdist(pos[1:], pos[1:]).fill_diagonal_(1.0).min() > 0.1
    assert (grid[0, 0] - grid[0, 1]).norm() < (grid[0, 0] - grid[0, 7]).norm()
    assert pos.requires_grad
    default = TCLVQAModel(config("model.pos_embed_init=normal").model, VOCAB, ANSWERS).vision_encoder.pos_embed
    assert default.std() < 0.05  # timm's N(0, 0.02)
