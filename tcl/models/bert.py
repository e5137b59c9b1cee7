"""Text encoder (BERT embeddings + the first ``fusion_layer`` BERT layers, from transformers), our fusion encoder
(bidirectional self-attention → cross-attention to image tokens → feed-forward), and the tied MLM head.

Parameter names follow BERT/ALBEF (``attention.self.query``, ``crossattention.output.dense`` ...) so the official
checkpoints map with one short rename table. transformers' ``BertLayer`` only cross-attends as a causal decoder, so
the fusion layers are our own; their sub-blocks (output projections, feed-forward) are transformers' modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import (BertEmbeddings, BertIntermediate, BertLayer, BertOutput,
                                                    BertPredictionHeadTransform, BertSelfOutput)

from tcl.config import ModelConfig


def bert_config(model: ModelConfig, vocab_size: int) -> BertConfig:
    """A BertConfig for the text and fusion encoders (bidirectional, SDPA attention)."""
    config = BertConfig(vocab_size=vocab_size, hidden_size=model.hidden_size,
                        num_hidden_layers=model.num_hidden_layers, num_attention_heads=model.num_attention_heads,
                        intermediate_size=model.intermediate_size, hidden_act="gelu",
                        hidden_dropout_prob=model.hidden_dropout, attention_probs_dropout_prob=model.attention_dropout,
                        max_position_embeddings=model.max_position_embeddings, type_vocab_size=2,
                        layer_norm_eps=1e-12, pad_token_id=0, is_decoder=False)
    config._attn_implementation = "sdpa"
    return config


def attention_mask_4d(mask: torch.Tensor) -> torch.Tensor:
    """[B, L] 0/1 padding mask → [B, 1, 1, L] boolean mask (True = attend) for scaled_dot_product_attention."""
    return mask.bool()[:, None, None, :]


class TextEncoder(nn.Module):
    """BERT embeddings and layers [0, fusion_layer): the unimodal text encoder."""

    def __init__(self, config: BertConfig, num_layers: int):
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(BertLayer(config, layer_idx=i) for i in range(num_layers))
        self.grad_checkpointing = False

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embeddings(input_ids=input_ids)
        mask = attention_mask_4d(attention_mask)
        for layer in self.encoder.layer:
            hidden = _maybe_checkpoint(self.grad_checkpointing and self.training, layer, hidden, mask)
        return hidden


class AttentionProjections(nn.Module):
    """query/key/value projections and SDPA; key/value read ``kv_width``-dimensional states (the image tokens)."""

    def __init__(self, hidden: int, heads: int, kv_width: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)
        # A module (no weights) rather than a float, so that dropout can be switched off like every other one.
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None,
                context_index: torch.Tensor | None = None) -> torch.Tensor:
        """``context_index`` [B]: the row of ``context`` each row of ``hidden`` reads (rows sharing an image); keys
        and values are then projected once per context row and gathered, the same maths as passing
        ``context[context_index]`` at a fraction of the cost."""
        q, k, v = (self._split(proj(x)) for proj, x in ((self.query, hidden), (self.key, context),
                                                          (self.value, context)))
        if context_index is not None:
            k, v = k.index_select(0, context_index), v.index_select(0, context_index)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout.p if self.training else 0.0)
        return out.transpose(1, 2).flatten(2)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)


class AttentionBlock(nn.Module):
    """Attention with BERT's post-LN residual output: ``self`` (projections) and ``output`` (dense, LayerNorm)."""

    def __init__(self, config: BertConfig, kv_width: int):
        super().__init__()
        self.self = AttentionProjections(config.hidden_size, config.num_attention_heads, kv_width,
                                         config.attention_probs_dropout_prob)
        self.output = BertSelfOutput(config)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None,
                context_index: torch.Tensor | None = None) -> torch.Tensor:
        return self.output(self.self(hidden, context, mask, context_index), hidden)


class FusionLayer(nn.Module):
    """h = LN(h + SelfAttn(h)); h = LN(h + CrossAttn(h, image)); h = LN(h + FFN(h)) — bidirectional."""

    def __init__(self, config: BertConfig, image_width: int):
        super().__init__()
        self.attention = AttentionBlock(config, config.hidden_size)
        self.crossattention = AttentionBlock(config, image_width)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor,
                image_mask: torch.Tensor | None = None, image_index: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.attention(hidden, hidden, text_mask)
        hidden = self.crossattention(hidden, image, image_mask, image_index)
        return self.output(self.intermediate(hidden), hidden)


class FusionEncoder(nn.Module):
    """BERT layers [fusion_layer, num_hidden_layers), each cross-attending to the image tokens."""

    def __init__(self, config: BertConfig, num_layers: int, image_width: int):
        super().__init__()
        self.layer = nn.ModuleList(FusionLayer(config, image_width) for _ in range(num_layers))
        self.grad_checkpointing = False

    def forward(self, text_hidden: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor,
                image_mask: torch.Tensor | None = None, image_index: torch.Tensor | None = None) -> torch.Tensor:
        """``image_index`` [B]: the row of ``image_embeds`` (and ``image_mask``) each text reads, when texts share
        images (ITM's negatives, several questions about one image): each image's keys and values are then
        projected once a layer. None: row i reads image i."""
        mask = attention_mask_4d(attention_mask)
        if image_mask is not None:
            image_mask = attention_mask_4d(image_mask if image_index is None else image_mask[image_index])
        hidden = text_hidden
        for layer in self.layer:
            hidden = _maybe_checkpoint(self.grad_checkpointing and self.training, layer, hidden, mask, image_embeds,
                                       image_mask, image_index)
        return hidden


# The tied LM decoder's parameter name ends so; safetensors stores a shared tensor under one name only, so a saved
# state dict may lack it.
TIED_DECODER_SUFFIX = "predictions.decoder.weight"


class MLMHead(nn.Module):
    """BERT's ``cls.predictions``: transform (dense, GELU, LayerNorm), decoder tied to the word embeddings, bias."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = nn.Module()
        self.predictions.transform = BertPredictionHeadTransform(config)
        self.predictions.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.predictions.decoder.weight = word_embeddings.weight
        self.predictions.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        predictions = self.predictions
        return predictions.decoder(predictions.transform(hidden)) + predictions.bias


def _maybe_checkpoint(enabled: bool, layer: nn.Module, *args):
    if enabled:
        return torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)


def init_bert_weights(module: nn.Module, scheme: str = "bert", std: float = 0.02) -> None:
    """Initialises linear layers, embeddings and LayerNorms; ``scheme`` is ``model.init_scheme``:

    * ``bert``: N(0, std) weights, zero biases, unit LayerNorm (BERT);
    * ``xavier``: Xavier-uniform linear layers;
    * ``xavier_qk``: BERT's, except Xavier-uniform attention query and key projections. From scratch, BERT's init
      starts every attention nearly uniform with a gradient on its queries proportional to its tiny keys (a long
      plateau), while all-Xavier value and output projections average each text's positions into one state (rank
      collapse); this keeps the residual path small and the attention patterns trainable.
    """
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            if scheme == "xavier" or (scheme == "xavier_qk" and name.endswith((".query", ".key"))):
                nn.init.xavier_uniform_(sub.weight)
            else:
                nn.init.normal_(sub.weight, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, std=std)
            if sub.padding_idx is not None:
                with torch.no_grad():
                    sub.weight[sub.padding_idx].zero_()
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
