"""TextChunker: raw-text chunks with bos, a label on every token, no chunk over max_length, exact reassembly."""

from __future__ import annotations

import pytest
import torch

from unlearn.data.text import IGNORE_INDEX, TextChunker, pad_collate
from unlearn.data.tokenizer import train_tokenizer
from unlearn.errors import ConfigError

DOCS = [
    "The storm reached Lisbon on Monday. Officials in Lisbon closed the harbour for two days.",
    "A new bridge opened in Oslo. It cost four million crowns and took nine years to build.",
    "Short.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(DOCS * 4, vocab_size=300)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("max_length", [2, 5, 8, 64])
def test_chunks_per_document_reassemble_exactly(tokenizer, max_length: int) -> None:
    chunker = TextChunker(tokenizer, max_length=max_length)
    chunks = chunker.chunks(DOCS)
    bos = tokenizer.bos_token_id
    assert all(c["input_ids"][0] == bos and len(c["input_ids"]) <= max_length for c in chunks)
    assert all(c["labels"] == c["input_ids"] and c["attention_mask"] == [1] * len(c["input_ids"]) for c in chunks)
    # Dropping each chunk's bos and joining them gives every document's tokens back, in order, nothing lost.
    joined = [t for c in chunks for t in c["input_ids"][1:]]
    assert joined == [t for d in DOCS for t in _ids(tokenizer, d)]
    # No chunk straddles two documents: the per-document chunk counts add up.
    body = max_length - 1
    assert len(chunks) == sum(-(-len(_ids(tokenizer, d)) // body) for d in DOCS)


def test_concatenate_joins_documents_with_the_separator(tokenizer) -> None:
    chunker = TextChunker(tokenizer, max_length=16, concatenate=True, separator="\n\n")
    joined = [t for c in chunker.chunks(DOCS) for t in c["input_ids"][1:]]
    assert joined == _ids(tokenizer, "\n\n".join(DOCS))


def test_min_length_drops_tails_too_short_to_train_on(tokenizer) -> None:
    n = len(_ids(tokenizer, DOCS[2]))
    assert [len(c["input_ids"]) for c in TextChunker(tokenizer, max_length=64).chunks([DOCS[2]])] == [n + 1]
    assert TextChunker(tokenizer, max_length=64, min_length=n + 2).chunks([DOCS[2]]) == []


def test_collate_pads_right_with_ignored_labels(tokenizer) -> None:
    chunker = TextChunker(tokenizer, max_length=64)
    batch = chunker.collate(chunker.chunks(DOCS))
    lengths = [len(_ids(tokenizer, d)) + 1 for d in DOCS]
    assert batch["input_ids"].shape == (3, max(lengths))
    for row, n in enumerate(lengths):
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
    assert torch.equal(batch["labels"][0, : lengths[0]], batch["input_ids"][0, : lengths[0]])
    with pytest.raises(ValueError, match="empty batch"):
        pad_collate([], 0)


@pytest.mark.parametrize("bad", [1, 0, "64", True])
def test_bad_max_length_names_the_key(tokenizer, bad) -> None:
    with pytest.raises(ConfigError, match=r"benchmark\.max_length"):
        TextChunker(tokenizer, max_length=bad)
