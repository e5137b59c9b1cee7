"""Does a pretraining know where things are, as words? Each relation word of the val captions ("a red circle to the
[MASK] of a blue square": left / right / above / below) and each location word ("in the [MASK] left of the image":
left / right / top / bottom / center) is masked alone and the MLM head's choice among that group's words is
scored (a caption's wording already tells left/right from above/below, so chance is about 50 % for relations).
Then ITM judges each relation caption against the same caption with its relation flipped ("to the right of" for
"to the left of", "below" for "above"): the share of pairs whose true caption gets the higher match probability
(chance 50 %) — whether the fused state tells a true relation from a false one, what relation questions ask.

    python research/probes/probe_relation_words.py --run RUN [--captions 400]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from PIL import Image

GROUPS = {"relation": ("left", "right", "above", "below"), "location": ("left", "right", "top", "bottom", "center")}
RELATION = re.compile(r" (to the (left|right) of|above|below) an? ")


def caption_kind(caption: str) -> str | None:
    if caption.endswith("of the image."):
        return "location"
    return "relation" if RELATION.search(caption) else None


@torch.no_grad()
def word_accuracy(model, tokenizer, images: torch.Tensor, captions: list[str], words: tuple[str, ...]) -> tuple[int, int]:
    """(restored, masked) over every word of ``words`` in ``captions``, each masked alone."""
    word_ids = tokenizer.word_ids(list(words))
    text = tokenizer.encode_texts(captions, 30)
    image_embeds = model.encode_image(images)[0]
    hits = total = 0
    for row, column in (torch.isin(text.input_ids, torch.tensor(word_ids)) & text.attention_mask.bool()).nonzero():
        masked = text.input_ids[row:row + 1].clone()
        masked[0, column] = tokenizer.mask_id
        mask = text.attention_mask[row:row + 1]
        hidden = model.fuse(model.text_encoder(masked, mask), mask, image_embeds[row:row + 1])
        logits = model.mlm_head(hidden[0, column])
        hits += word_ids[int(logits[word_ids].argmax())] == int(text.input_ids[row, column])
        total += 1
    return hits, total


FLIPPED = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below",
           "below": "above"}


def flip_relation(caption: str) -> str:
    """The caption with its relation word turned round ("to the left of" <-> "to the right of", "above" <-> "below")."""
    return RELATION.sub(lambda m: m.group(0).replace(m.group(1), FLIPPED[m.group(1)]), caption, count=1)


@torch.no_grad()
def statement_pairs(model, tokenizer, images: torch.Tensor, captions: list[str]) -> int:
    """How many of the ``captions`` ITM scores above their flipped version (``flip_relation``) on their images."""
    image_embeds = model.encode_image(images)[0]
    scores = []
    for texts in (captions, [flip_relation(c) for c in captions]):
        text = tokenizer.encode_texts(texts, 30)
        embeds = model.text_encoder(text.input_ids, text.attention_mask)
        scores.append(model.itm_logits(embeds, text.attention_mask, image_embeds).softmax(dim=1)[:, 1])
    return int((scores[0] > scores[1]).sum())


def main() -> None:
    from tcl.data.transforms import test_transform
    from tcl.inference.runs import load_pretrain_run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a pretraining run folder")
    parser.add_argument("--captions", type=int, default=400, help="captions of each kind (default 400)")
    args = parser.parse_args()
    config, model, tokenizer = load_pretrain_run(Path(args.run))
    root = Path(config.data.root)
    data = json.loads((root / "annotations/captions_val2014.json").read_text())
    files = {image["id"]: image["file_name"] for image in data["images"]}
    transform = test_transform(config.model.image_size)
    results = {}
    for kind, words in GROUPS.items():
        rows = [(a["image_id"], a["caption"]) for a in data["annotations"] if caption_kind(a["caption"]) == kind]
        rows = rows[:args.captions]
        hits = total = 0
        for start in range(0, len(rows), 64):
            part = rows[start:start + 64]
            images = torch.stack([transform(Image.open(root / "images/val2014" / files[i]).convert("RGB"))
                                  for i, _ in part])
            found, masked = word_accuracy(model, tokenizer, images, [c for _, c in part], words)
            hits, total = hits + found, total + masked
        results[kind] = {"accuracy": 100.0 * hits / max(total, 1), "words": total}
        print(f"{kind} words restored: {hits} / {total} = {results[kind]['accuracy']:.1f} %")
        if kind == "relation":
            right = sum(statement_pairs(model, tokenizer, torch.stack([
                transform(Image.open(root / "images/val2014" / files[i]).convert("RGB")) for i, _ in rows[k:k + 64]]),
                [c for _, c in rows[k:k + 64]]) for k in range(0, len(rows), 64))
            results["statements"] = {"accuracy": 100.0 * right / max(len(rows), 1), "pairs": len(rows)}
            print(f"relation captions preferred to their flipped version by ITM: {right} / {len(rows)} = "
                  f"{results['statements']['accuracy']:.1f} %")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
