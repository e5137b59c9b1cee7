"""Tokenisation with TCL's convention, and the WordPiece vocabulary built for the embedded dataset.

TCL (TCL.md Part B §1.3) encodes texts and questions as ``[CLS] w1 ... wn`` with NO trailing ``[SEP]``, and answers
as ``[CLS] a1 ... am [SEP]``. A stock BERT tokenizer appends ``[SEP]`` to every sequence, so ``TclTokenizer`` builds
the ids itself from the tokenizer's word pieces.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from transformers import BertTokenizer

from tcl.errors import DataError
from tcl.pretrained_parts import locate, tokenizer_part

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# A training run keeps the tokenizer it was trained with in this folder of its own, as a saved model keeps its
# processor: its word embeddings have one row per word of that tokenizer and of no other.
RUN_TOKENIZER = "tokenizer"


def build_wordpiece_tokenizer(texts: Iterable[str], out_dir: str | Path, min_count: int = 1) -> BertTokenizer:
    """Builds an uncased WordPiece vocabulary from ``texts`` and saves it as a BERT tokenizer in ``out_dir``.

    The vocabulary is every word seen at least ``min_count`` times (split with BERT's normaliser and pre-tokeniser
    from the tokenizers library) plus every character as a word start and as a ``##`` continuation, so any unseen
    word still tokenises. The tokenizers library's WordPiece *trainer* breaks frequency ties in a different order on
    every run; a closed, small world does not need learned sub-words, and this way the same corpus always gives the
    same files. ``[PAD]`` gets id 0, as in BERT, because the models treat id 0 as padding.
    """
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for text in texts:
        counts.update(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    words = sorted(word for word, count in counts.items() if count >= min_count)
    characters = sorted({character for word in counts for character in word})
    pieces = [c for c in characters if c not in words] + [f"##{c}" for c in characters]
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + words + pieces)}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def load_tokenizer(name_or_path: str | Path) -> BertTokenizer:
    """Loads a BERT tokenizer from a local directory, or by hub name (e.g. ``bert-base-uncased``) from the hub or,
    offline, its cache (``MissingPretrainedPart``, the message every missing pretrained part gives, otherwise)."""
    folder = locate(tokenizer_part(str(name_or_path)))
    try:
        return BertTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as error:
        raise DataError(f"{folder}: not a readable BERT tokenizer ({error}). Set data.tokenizer to a folder that "
                        f"save_pretrained wrote (vocab.txt).") from None


def run_tokenizer_dir(run_or_checkpoint: str | Path) -> Path | None:
    """The tokenizer a training run saved (``<run>/tokenizer``; a checkpoint folder means its run's), or None."""
    path = Path(run_or_checkpoint)
    for folder in (path, path.parent):
        if (folder / RUN_TOKENIZER).is_dir():
            return folder / RUN_TOKENIZER
    return None


def save_run_tokenizer(tokenizer: "TclTokenizer", run_dir: str | Path) -> None:
    """Saves the tokenizer a run trains with into the run folder (``run_tokenizer_dir`` finds it)."""
    tokenizer.tokenizer.save_pretrained(str(Path(run_dir) / RUN_TOKENIZER))


def tokenizer_mismatch(source: str, weight_rows: int, tokenizer_words: int, tokenizer_name: str,
                       suggestion: str | Path | None) -> DataError:
    """The one error for weights and a tokenizer that do not belong together: which setting to change, to what."""
    fix = (f"set data.tokenizer={suggestion} (the tokenizer they were trained with)" if suggestion else
           "set data.tokenizer to the tokenizer they were trained with (a run folder keeps it in "
           f"{RUN_TOKENIZER}/)")
    return DataError(f"{source}: its word embeddings have {weight_rows} rows but the tokenizer {tokenizer_name} has "
                     f"{tokenizer_words} words: the weights were trained with another tokenizer. To fine-tune them, "
                     f"{fix}; new words of your data are then split into the pieces that tokenizer knows.")


@dataclass
class TokenizedText:
    """A padded batch: ``input_ids`` and ``attention_mask`` of shape [B, L]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor


class TclTokenizer:
    """Wraps a BERT tokenizer to produce TCL-convention id tensors."""

    def __init__(self, tokenizer: BertTokenizer):
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.cls_id = tokenizer.cls_token_id
        self.sep_id = tokenizer.sep_token_id
        self.mask_id = tokenizer.mask_token_id
        if self.pad_id != 0:
            raise DataError(f"tokenizer pad id is {self.pad_id}; the models assume [PAD] = 0 as in BERT.")

    def __len__(self) -> int:
        return len(self.tokenizer)

    def encode_texts(self, texts: Sequence[str], max_length: int | None = None) -> TokenizedText:
        """``[CLS] w1 ... wn [PAD] ...``, truncated to ``max_length`` tokens in total (None: no truncation)."""
        pieces = self._pieces(texts)
        if max_length is not None:
            pieces = [ids[: max_length - 1] for ids in pieces]
        return self._pad([[self.cls_id, *ids] for ids in pieces])

    def encode_answers(self, answers: Sequence[str]) -> TokenizedText:
        """``[CLS] a1 ... am [SEP] [PAD] ...`` (never truncated, as TCL)."""
        return self._pad([[self.cls_id, *ids, self.sep_id] for ids in self._pieces(answers)])

    def word_ids(self, words: Sequence[str]) -> list[int]:
        """The token id of each word, which must be a single token of the vocabulary (DataError naming the ones that
        are not)."""
        vocab = self.tokenizer.get_vocab()
        missing = [word for word in words if word not in vocab]
        if missing:
            raise DataError(f"not single tokens of the tokenizer's vocabulary: {', '.join(missing)}. Use words the "
                            "captions contain, or retrain the tokenizer on captions that do.")
        return [vocab[word] for word in words]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _pieces(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError("pass a list of strings, not a single string")
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def _pad(self, sequences: list[list[int]]) -> TokenizedText:
        length = max(len(ids) for ids in sequences)
        # Padded as lists and converted once: a tensor per row cost a third of a batch's collation.
        padded = [list(ids) + [self.pad_id] * (length - len(ids)) for ids in sequences]
        mask = [[1] * len(ids) + [0] * (length - len(ids)) for ids in sequences]
        return TokenizedText(torch.tensor(padded, dtype=torch.long), torch.tensor(mask, dtype=torch.long))
