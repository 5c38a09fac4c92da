"""Raw-text training examples: token chunks with a loss on every token, and the padding collator all examples share.

MUSE trains and unlearns on raw text (news articles, book chapters), WMDP's forget and retain corpora are raw text,
and the embedded benchmarks pretrain on a general corpus. All of them become the same kind of example the QA data
does (`input_ids`, `labels`, `attention_mask`, lists of int), so every objective, the loop and gradient accumulation
treat them alike: the only difference is that a text chunk has a label on every token, a QA pair only on its answer.

Chunking follows MUSE's unlearning data (`baselines/dataset.py` of muse_bench: the text is tokenised without
special tokens, cut into pieces of `max_length - 1` tokens and each piece starts with bos): position 0 (bos) is never
a target, every other token is. Documents are chunked one by one (`concatenate=False`), so no chunk straddles two
articles, or joined first (`concatenate=True`, separated by `separator`), as MUSE does with a whole corpus file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from unlearn.errors import ConfigError

IGNORE_INDEX = -100
"""Label value ignored by `torch.nn.functional.cross_entropy` (its default `ignore_index`)."""

Example = dict[str, list[int]]


def pad_collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded examples into LongTensors; padding gets label -100 and attention 0.

    Shared by QA pairs and text chunks: right padding keeps every real token at the position it was trained at, and
    the -100 labels keep padding out of every loss.
    """
    if not examples:
        raise ValueError("collate: empty batch")
    width = max(len(e["input_ids"]) for e in examples)
    ids, labels, mask = [], [], []
    for e in examples:
        n = len(e["input_ids"])
        pad = width - n
        ids.append(list(e["input_ids"]) + [pad_id] * pad)
        labels.append(list(e["labels"]) + [IGNORE_INDEX] * pad)
        mask.append(list(e.get("attention_mask", [1] * n)) + [0] * pad)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
    }


def text_example(ids: Sequence[int]) -> Example:
    """One chunk as a training example: every token is labelled (the first is never predicted: nothing precedes it)."""
    ids = [int(i) for i in ids]
    return {"input_ids": ids, "labels": list(ids), "attention_mask": [1] * len(ids)}


class TextChunker:
    """Cuts documents into training chunks of at most `max_length` tokens, each starting with bos.

    Args:
        tokenizer: a Hugging Face tokenizer; its `bos_token_id` (if any) opens every chunk and its `pad_token_id`
            (or eos when it has none, as Llama tokenizers) pads batches.
        max_length: tokens per chunk, bos included (MUSE: 2048).
        min_length: chunks with fewer tokens (bos included) are dropped; a 1-token chunk has no target at all.
        concatenate: join all documents (with `separator`) before chunking, as MUSE does with a corpus file, instead
            of chunking each document on its own.
        separator: text placed between documents when `concatenate` is set.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        min_length: int = 2,
        concatenate: bool = False,
        separator: str = "\n\n",
    ) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ConfigError(f"benchmark.max_length: expected an integer >= 2, got {max_length!r}")
        if isinstance(min_length, bool) or not isinstance(min_length, int) or not 2 <= min_length <= max_length:
            raise ConfigError(f"benchmark.min_length: expected an integer in [2, max_length], got {min_length!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.min_length = min_length
        self.concatenate = bool(concatenate)
        self.separator = separator
        self.bos_id: int | None = None if tokenizer.bos_token_id is None else int(tokenizer.bos_token_id)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ConfigError("model tokenizer: has neither a pad nor an eos token to pad batches with")
        self.pad_id = int(pad)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chunks(self, documents: Iterable[str]) -> list[Example]:
        """Training examples of every document, in document order."""
        docs = list(documents)
        if self.concatenate:
            docs = [self.separator.join(docs)] if docs else []
        prefix = [] if self.bos_id is None else [self.bos_id]
        body = self.max_length - len(prefix)
        out: list[Example] = []
        for doc in docs:
            ids = self._ids(doc)
            for start in range(0, len(ids), body):
                chunk = prefix + ids[start : start + body]
                if len(chunk) >= self.min_length:
                    out.append(text_example(chunk))
        return out

    def collate(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        return pad_collate(examples, self.pad_id)
