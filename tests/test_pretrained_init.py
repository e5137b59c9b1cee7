"""Initial weights from public checkpoint formats, offline: a saved BERT directory and a timm ViT checkpoint file."""

from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer
from transformers import BertConfig, BertForMaskedLM

from tcl.config import load_config
from tcl.models import TCLPretrainModel
from tcl.models.pretrained import initialise_from_pretrained

REPO = Path(__file__).resolve().parents[1]
VOCAB = 60


def test_bert_directory_and_vit_file_initialise_the_model(tmp_path):
    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                      intermediate_size=512, max_position_embeddings=64))
    bert.save_pretrained(tmp_path / "bert")
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=128, depth=4, num_heads=4, num_classes=10)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    config = load_config(REPO / "configs/pretrain_tiny.yaml",
                         [f"model.text_pretrained={tmp_path / 'bert'}", "model.vision_stem=patch",
                          f"model.vision_pretrained={tmp_path / 'vit.pth'}"])
    model = TCLPretrainModel(config.model, config.loss, VOCAB)
    initialise_from_pretrained(model, config.model)

    source = bert.state_dict()
    assert torch.equal(model.text_encoder.encoder.layer[1].attention.self.query.weight,
                       source["bert.encoder.layer.1.attention.self.query.weight"])
    assert torch.equal(model.fusion_encoder.layer[0].attention.self.query.weight,
                       source["bert.encoder.layer.2.attention.self.query.weight"])
    assert torch.equal(model.fusion_encoder.layer[1].output.dense.weight,
                       source["bert.encoder.layer.3.output.dense.weight"])
    assert torch.equal(model.text_encoder.embeddings.word_embeddings.weight,
                       source["bert.embeddings.word_embeddings.weight"])
    assert model.mlm_head.predictions.decoder.weight is model.text_encoder.embeddings.word_embeddings.weight
    assert torch.equal(model.mlm_head.predictions.transform.dense.weight,
                       source["cls.predictions.transform.dense.weight"])
    # The ViT was trained at 32 px: its 4 x 4 grid of position embeddings is resampled to the model's 8 x 8.
    assert model.vision_encoder.pos_embed.shape == (1, 65, 128)
    assert torch.equal(model.vision_encoder.pos_embed[:, 0], vit.pos_embed[:, 0])
    assert torch.equal(model.vision_encoder.blocks[2].attn.qkv.weight, vit.blocks[2].attn.qkv.weight)
    # The momentum copy starts from the loaded weights.
    for online, teacher in zip(model.online_modules().parameters(), model.momentum.parameters()):
        assert torch.equal(online, teacher)


def test_vqa_fine_tuning_can_start_from_a_plain_bert_without_tcl_pretraining(tmp_path):
    """vqa.init=null with model.text_pretrained: TCL's VQA recipe applied to a plain BERT (no MLM head, no
    pretraining momentum copy in the VQA model)."""
    from tcl.engine.finetune_vqa import build_vqa_model

    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                      intermediate_size=512, max_position_embeddings=64))
    bert.save_pretrained(tmp_path / "bert")
    source = bert.state_dict()
    for head in ("classifier", "decoder"):
        config = load_config(REPO / "configs/vqa_tiny.yaml", ["vqa.init=null", f"vqa.head={head}",
                                                              f"model.text_pretrained={tmp_path / 'bert'}"])
        model = build_vqa_model(config, VOCAB, num_answers=7, training=True)
        assert torch.equal(model.fusion_encoder.layer[1].output.dense.weight,
                           source["bert.encoder.layer.3.output.dense.weight"])
        assert torch.equal(model.text_encoder.embeddings.word_embeddings.weight,
                           source["bert.embeddings.word_embeddings.weight"])

