"""Zero-shot image-text retrieval as TCL's ``Retrieval.py`` measures it (TCL.md Part B §7.3), plus the two probes
of pretraining that go with it: ITM accuracy on true vs random captions and MLM accuracy on masked content words.

Ranking: every image against every text by the cosine of the contrastive features (ITC); the top ``k_test``
candidates of each query are re-ranked by the ITM head's match logit, and the rest keep score −inf. Recall@K counts a
query as found when one of its positives ranks within the first K. Ties are broken against the query: a negative that
scores *the same* as the best positive counts as ranked above it, so a collapsed model (all scores equal) gets 0, not
a lucky hit; K larger than the gallery always finds the positive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from tcl.evaluation.sharding import ALONE, Shard

KS = (1, 5, 10)


@dataclass
class RetrievalSet:
    """Images and their captions; ``text_image[t]`` is the position of caption t's image in the set.

    A process that shares the evaluation holds only some of the images: ``images[j]`` is the image at position
    ``positions[j]`` of ``num_images``; by default it holds them all, in order."""

    images: torch.Tensor  # [I held, 3, H, W]
    input_ids: torch.Tensor  # [T, L]
    attention_mask: torch.Tensor  # [T, L]
    text_image: torch.Tensor  # [T] long
    texts: list[str]
    positions: torch.Tensor | None = None  # [I held] long; None: every image, in order
    num_images: int | None = None  # None: len(images)

    def __post_init__(self):
        if self.positions is None:
            self.positions = torch.arange(len(self.images))
        if self.num_images is None:
            self.num_images = len(self.images)

    def held_index(self, device=None) -> torch.Tensor:
        """[num_images] long: the row in ``images`` of each image this process holds, -1 for the others."""
        index = torch.full((self.num_images,), -1, dtype=torch.long)
        index[self.positions] = torch.arange(len(self.positions))
        return index.to(device)


def positive_ranks(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """The rank (0 = first) of each row's best positive among its negatives; ties count against the row.

    Args:
        scores: [Q, G] query-by-gallery scores.
        positive: [Q, G] bool, True where the gallery item matches the query (at least one per row).
    """
    if not positive.any(dim=1).all():
        raise ValueError("every query needs at least one positive in the gallery")
    best = scores.masked_fill(~positive, float("-inf")).max(dim=1).values
    return ((scores >= best[:, None]) & ~positive).sum(dim=1)


def recall_at_k(scores_i2t: torch.Tensor, text_image: torch.Tensor, scores_t2i: torch.Tensor | None = None,
                ks: Sequence[int] = KS) -> dict[str, float]:
    """Image→text and text→image recall@K in percent, and their mean (``r_mean``), as TCL reports them.

    Args:
        scores_i2t: [I, T] score of every text for every image (the i2t ranking).
        text_image: [T] image index of each text (an image may have several texts).
        scores_t2i: [T, I] score of every image for every text; default ``scores_i2t.T``.
        ks: the K values.
    """
    num_images, num_texts = scores_i2t.shape
    if text_image.shape != (num_texts,):
        raise ValueError(f"text_image must have one entry per text ({num_texts}), got {tuple(text_image.shape)}")
    scores_t2i = scores_i2t.T if scores_t2i is None else scores_t2i
    matches = torch.arange(num_images, device=text_image.device)[:, None] == text_image[None, :]  # [I, T]
    i2t = positive_ranks(scores_i2t.float(), matches)
    t2i = positive_ranks(scores_t2i.float(), matches.T)
    result = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            result[f"{name}_r{k}"] = 100.0 * int((ranks < k).sum()) / len(ranks)
    result["r_mean"] = sum(result.values()) / len(result)
    return result


def rerank_top_k(itc: torch.Tensor, k: int, image_scores, positions: torch.Tensor, shard: Shard = ALONE
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-``k`` candidates of every query by ITC, both ways, re-scored; every other pair scores −inf.

    Args:
        itc: [I, T] ITC similarity of every image and text.
        k: candidates per query (at most the gallery).
        image_scores: ``image_scores(j, texts)`` → the new scores of ``texts`` (an index tensor) with the j-th image
            this process holds.
        positions: [I held] the positions of the images this process holds; each pair is scored once, by the process
            that holds its image, and the scores are totalled over ``shard``.

    Returns:
        scores_i2t [I, T] and scores_t2i [T, I].
    """
    num_images, num_texts = itc.shape
    rows_i, rows_t = torch.arange(num_images, device=itc.device), torch.arange(num_texts, device=itc.device)
    i2t = torch.zeros_like(itc, dtype=torch.bool)
    i2t[rows_i[:, None], itc.topk(min(k, num_texts), dim=1).indices] = True
    t2i = torch.zeros_like(itc, dtype=torch.bool)  # [I, T] too: image i is among text t's candidates
    t2i[itc.T.topk(min(k, num_images), dim=1).indices, rows_t[:, None]] = True
    wanted = i2t | t2i
    scores = torch.zeros_like(itc)
    for j, position in enumerate(positions.tolist()):
        texts = wanted[position].nonzero(as_tuple=True)[0]
        scores[position, texts] = image_scores(j, texts).to(scores.dtype)
    scores = shard.total(scores)
    return scores.masked_fill(~i2t, float("-inf")), scores.T.masked_fill(~t2i.T, float("-inf"))


@torch.no_grad()
def encode_set(model, data: RetrievalSet, batch_size: int = 128):
    """Image tokens and features, text states and features of a retrieval set (in batches)."""
    device = next(model.parameters()).device
    # At least one (possibly empty) batch: a process that holds none of the images still gets [0, ...] tensors.
    image_parts = [model.encode_image(data.images[i:i + batch_size].to(device))
                   for i in range(0, max(len(data.images), 1), batch_size)]
    text_parts = [model.encode_text(data.input_ids[i:i + batch_size].to(device),
                                    data.attention_mask[i:i + batch_size].to(device))
                  for i in range(0, len(data.input_ids), batch_size)]
    image_embeds, image_feat = (torch.cat(part) for part in zip(*image_parts))
    text_embeds, text_feat = (torch.cat(part) for part in zip(*text_parts))
    return image_embeds, image_feat, text_embeds, text_feat, data.attention_mask.to(device)


def _itm_logit(model, text_embeds, attention_mask, image_embeds, image_index=None) -> torch.Tensor:
    """The ITM head's match logit of (text, image) rows (``image_index``: see ``TCLPretrainModel.fuse``)."""
    return model.itm_logits(text_embeds, attention_mask, image_embeds, image_index)[:, 1].float()


@torch.no_grad()
def evaluate_retrieval(model, data: RetrievalSet, k_test: int = 256, batch_size: int = 128,
                       encoded: tuple | None = None, shard: Shard = ALONE) -> dict[str, float]:
    """Recall@1/5/10 both ways ranked by ITC with the top ``k_test`` re-ranked by ITM (TCL's ``Retrieval.py``), and
    the same by ITC alone (``itc_*``). ``encoded``: ``encode_set``'s result, when the caller has it already."""
    model.eval()
    image_embeds, image_feat, text_embeds, text_feat, mask = encoded or encode_set(model, data, batch_size)
    image_feat = shard.assemble(image_feat, data.positions, data.num_images)
    itc = (image_feat @ text_feat.T).float()
    text_image = data.text_image.to(itc.device)

    def texts_with_image(j, texts):
        scores = [_itm_logit(model, text_embeds[part], mask[part], image_embeds[j:j + 1],
                             torch.zeros(len(part), dtype=torch.long, device=image_embeds.device))
                  for part in texts.split(batch_size)]
        return torch.cat(scores) if scores else itc.new_zeros(0)

    scores_i2t, scores_t2i = rerank_top_k(itc, k_test, texts_with_image, data.positions.to(itc.device), shard)
    result = recall_at_k(scores_i2t, text_image, scores_t2i)
    result.update({f"itc_{name}": value for name, value in recall_at_k(itc, text_image).items()})
    return result


def mismatched_texts(data: RetrievalSet, seed: int = 0) -> torch.Tensor:
    """For each image, the index of a caption of another image whose text differs from all the image's captions."""
    generator = torch.Generator().manual_seed(seed)
    own = {}
    for t, i in enumerate(data.text_image.tolist()):
        own.setdefault(i, set()).add(data.texts[t])
    choice = []
    for image in range(data.num_images):
        for candidate in torch.randperm(len(data.texts), generator=generator).tolist():
            if data.text_image[candidate] != image and data.texts[candidate] not in own.get(image, ()):
                choice.append(candidate)
                break
        else:
            raise ValueError("every caption of the set describes the same image; ITM accuracy needs two images")
    return torch.tensor(choice)


@torch.no_grad()
def itm_accuracy(model, data: RetrievalSet, seed: int = 0, batch_size: int = 128, encoded: tuple | None = None,
                 shard: Shard = ALONE) -> float:
    """Percent of (image, its first caption) pairs the ITM head calls a match and (image, a random other image's
    caption) pairs it calls a mismatch, over both kinds of pairs."""
    model.eval()
    image_embeds, _, text_embeds, _, mask = encoded or encode_set(model, data, batch_size)
    first = torch.tensor([data.text_image.tolist().index(i) for i in range(data.num_images)])
    wrong = mismatched_texts(data, seed)
    correct = torch.zeros((), dtype=torch.long, device=image_embeds.device)
    for texts, label in ((first[data.positions], True), (wrong[data.positions], False)):
        for start in range(0, len(texts), batch_size):
            part = texts[start:start + batch_size]
            logits = model.itm_logits(text_embeds[part], mask[part], image_embeds[start:start + batch_size]).float()
            correct += ((logits[:, 1] > logits[:, 0]) == label).sum()
    return 100.0 * int(shard.total(correct)) / (2 * data.num_images)


def masked_word_hits(model, data: RetrievalSet, word_ids: Sequence[int], mask_id: int, batch_size: int = 128,
                     encoded: tuple | None = None, shard: Shard = ALONE) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Each content-word token of the set masked alone: its id and whether the MLM head restores it (two [N]
    tensors, on the CPU); None when the captions hold none of ``word_ids``."""
    model.eval()
    device = next(model.parameters()).device
    ids, attention = data.input_ids.to(device), data.attention_mask.to(device)
    is_word = torch.isin(ids, torch.tensor(list(word_ids), device=device)) & attention.bool()
    rows, columns = is_word.nonzero(as_tuple=True)
    if len(rows) == 0:
        return None
    image_embeds = (encoded or encode_set(model, data, batch_size))[0]
    held = data.held_index(device)[data.text_image.to(device)[rows]]  # each token's caption's image, here
    mine = (held >= 0).nonzero(as_tuple=True)[0]
    hits = torch.zeros(len(rows), dtype=torch.long, device=device)
    for start in range(0, len(mine), batch_size):
        token = mine[start:start + batch_size]
        row, column = rows[token], columns[token]
        masked = ids[row].clone()
        masked[torch.arange(len(row), device=device), column] = mask_id
        # Only this batch's images, each projected once for the captions that name it (a full-size gallery holds
        # thousands).
        images, image_index = held[token].unique(return_inverse=True)
        hidden = model.fuse(model.text_encoder(masked, attention[row]), attention[row], image_embeds[images],
                            image_index)
        logits = model.mlm_head(hidden[torch.arange(len(row), device=device), column])
        hits[token] = (logits.argmax(dim=-1) == ids[row, column]).long()
    return ids[rows, columns].cpu(), shard.total(hits).bool().cpu()


@torch.no_grad()
def swap_accuracy(model, data: RetrievalSet, word_classes: Sequence[Sequence[int]], seed: int = 0,
                  batch_size: int = 128, encoded: tuple | None = None, shard: Shard = ALONE
                  ) -> dict[str, float] | None:
    """Attribute binding: each caption against itself with one word of ``word_classes`` swapped for another of its
    class ("a red circle" vs "a red square"). Percent of captions whose image the ITM head (``itm``) and the
    contrastive features (``itc``) score higher with the true caption than with the swapped one (chance 50 %; ties
    count as wrong); None when no caption holds a word of the classes."""
    from tcl.models.word_swap import WordSwapper

    model.eval()
    image_embeds, image_feat, text_embeds, text_feat, mask = encoded or encode_set(model, data, batch_size)
    device = image_embeds.device
    swapper = WordSwapper(word_classes, model.vocab_size)
    swapped, changed = swapper.to(device)(data.input_ids.to(device), mask,
                                          torch.Generator(device=device).manual_seed(seed))
    rows = changed.nonzero(as_tuple=True)[0]
    if len(rows) == 0:
        return None
    held = data.held_index(device)[data.text_image.to(device)[rows]]
    mine, mine_images = rows[held >= 0], held[held >= 0]
    wins = torch.zeros(2, dtype=torch.long, device=device)  # ITM, ITC
    for start in range(0, len(mine), batch_size):
        row = mine[start:start + batch_size]
        images = mine_images[start:start + batch_size]
        false_embeds, false_feat = model.encode_text(swapped[row], mask[row])
        true_itm = _itm_logit(model, text_embeds[row], mask[row], image_embeds[images])
        false_itm = _itm_logit(model, false_embeds, mask[row], image_embeds[images])
        wins[0] += (true_itm > false_itm).sum()
        true_itc = (image_feat[images] * text_feat[row]).sum(-1)
        wins[1] += (true_itc > (image_feat[images] * false_feat).sum(-1)).sum()
    itm, itc = shard.total(wins).tolist()
    return {"itm": 100.0 * itm / len(rows), "itc": 100.0 * itc / len(rows)}


@torch.no_grad()
def evaluate_pretraining(model, data: RetrievalSet, word_groups: Mapping[str, Sequence[Sequence[int]]],
                         mask_id: int, k_test: int = 256, batch_size: int = 128, shard: Shard = ALONE
                         ) -> dict[str, float]:
    """Everything that shows whether pretraining learns: retrieval recalls (ITM re-ranked and ITC alone), ITM
    accuracy on true vs random captions, and per group of content words (``word_groups``: name → classes of
    interchangeable token ids, e.g. colour → [[red, green, ...]]) MLM accuracy when one is masked
    (``mlm_word_accuracy`` over all, ``mlm_<group>_accuracy``) and attribute binding against a caption with one
    swapped (``swap_itm_<group>``, ``swap_itc_<group>``), and the uniformity of both towers' features on the set
    (log E exp(−2‖x − y‖²); lower is more spread out). ``shard``: this process's share, when several share
    it."""
    from tcl.losses.diagnostics import uniformity

    model.eval()
    encoded = encode_set(model, data, batch_size)  # once, for every measure below
    result = {"images": data.num_images, "texts": len(data.texts),
              **evaluate_retrieval(model, data, k_test, batch_size, encoded, shard)}
    result["itm_accuracy"] = itm_accuracy(model, data, batch_size=batch_size, encoded=encoded, shard=shard)
    group_ids = {group: [i for ids in classes for i in ids] for group, classes in word_groups.items()}
    restored = masked_word_hits(model, data, [i for ids in group_ids.values() for i in ids], mask_id, batch_size,
                                encoded, shard)
    if restored is not None:
        tokens, hits = restored
        result["mlm_word_accuracy"] = 100.0 * hits.float().mean().item()
        for group, ids in group_ids.items():
            in_group = torch.isin(tokens, torch.tensor(ids, dtype=tokens.dtype))
            if in_group.any():
                result[f"mlm_{group}_accuracy"] = 100.0 * hits[in_group].float().mean().item()
    for group, classes in word_groups.items():
        binding = swap_accuracy(model, data, [ids for ids in classes if len(ids) >= 2], batch_size=batch_size,
                                encoded=encoded, shard=shard) if any(len(ids) >= 2 for ids in classes) else None
        for name, value in (binding or {}).items():
            result[f"swap_{name}_{group}"] = value
    _, image_feat, _, text_feat, _ = encoded
    image_feat = shard.assemble(image_feat, data.positions, data.num_images)
    result["uniformity_image"] = float(uniformity(image_feat))
    result["uniformity_text"] = float(uniformity(text_feat))
    return result
