"""Does a pretraining know where things are, as words? Each relation word of the val captions ("a red circle to the
[MASK] of a blue square": left / right / above / below) and each location word ("in the [MASK] left of the image":
left / right / top / bottom / center) is masked alone and the MLM head's choice among that group's words is
scored (a caption's wording already tells left/right from above/below, so chance is about 50 % for relations).

    python benchmarks/probes/probe_relation_words.py --run RUN [--captions 400]
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
    print(json.dumps(results))


if __name__ == "__main__":
    main()
