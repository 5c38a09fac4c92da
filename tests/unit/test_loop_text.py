"""Raw-text training (MUSE chunks: every token labelled, unequal lengths) accumulates exactly, as QA does."""

from __future__ import annotations

import pytest
import torch

from tests.unit.test_loop import make, params
from unlearn.data.text import TextChunker


class IntTokenizer:
    """Texts are space-separated token ids; bos 1, eos 2, pad 0 (what TextChunker reads of a tokenizer)."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [int(t) for t in text.split()]}


def documents(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(str(int(t)) for t in torch.randint(3, 32, (int(torch.randint(4, 20, (1,), generator=g)),),
                                                       generator=g)) for _ in range(n)]


@pytest.mark.parametrize("rule", [{"name": "blur", "gamma": 1.0}, {"name": "weighted"}])
def test_text_chunks_four_micro_batches_equal_one_batch(rule: dict) -> None:
    chunker = TextChunker(IntTokenizer(), max_length=8)
    forget, retain = chunker.chunks(documents(5, 0))[:8], chunker.chunks(documents(5, 1))[:8]
    assert len(forget) == len(retain) == 8
    assert len({len(e["input_ids"]) for e in forget}) > 1  # unequal lengths: padding differs per micro-batch
    assert all(e["labels"] == e["input_ids"] and e["input_ids"][0] == 1 for e in forget)
    one, four = make(rule, micro=None, optimizer="adamw"), make(rule, micro=2, optimizer="adamw")
    one.collate = four.collate = chunker.collate
    for _ in range(3):
        d1, d4 = one.step(forget, retain), four.step(forget, retain)
        for k in ("loss_f", "loss_r", "norm_f", "norm_r", "cos_fr"):
            assert d4[k] == pytest.approx(d1[k], rel=1e-9, abs=1e-12), k
    torch.testing.assert_close(params(four), params(one), rtol=1e-9, atol=1e-12)
