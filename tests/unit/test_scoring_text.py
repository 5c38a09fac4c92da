"""Raw-text scoring (token log-probs for Min-K%, greedy continuation of token prompts) on models with known outputs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.tiny_lm import make_model
from unlearn.evals.muse_metrics import min_k_score
from unlearn.evals.scoring import continue_greedy, token_logprobs


class Bigram(torch.nn.Module):
    """A model whose next-token distribution depends on the current token only: logits = table[token]."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])


def test_token_logprobs_on_a_known_distribution() -> None:
    # Vocab of 3: from any token, p = (1/2, 1/4, 1/4) for tokens (0, 1, 2).
    probs = torch.tensor([0.5, 0.25, 0.25])
    model = Bigram(probs.log().expand(3, 3))
    seq = [0, 1, 2, 0, 0, 1]  # targets 1, 2, 0, 0, 1 -> log 1/4, log 1/4, log 1/2, log 1/2, log 1/4
    (lp,) = token_logprobs(model, [seq], pad_id=0)
    want = np.log([0.25, 0.25, 0.5, 0.5, 0.25])
    np.testing.assert_allclose(lp, want, rtol=0, atol=1e-6)  # float32 log-softmax
    # Min-40%: k = floor(5 * 0.4) = 2 lowest: log 1/4 twice -> score log 4.
    assert min_k_score(lp, 0.4) == pytest.approx(np.log(4.0), abs=1e-6)


def test_token_logprobs_do_not_depend_on_the_batch() -> None:
    from tests.unit.test_scoring import make_tokenizer

    tok = make_tokenizer()
    model = make_model(tok)
    seqs = [[1, 5, 6, 7, 8, 9, 10], [1, 11, 12], [1, 13, 14, 15, 16]]
    alone = [token_logprobs(model, [s], pad_id=0)[0] for s in seqs]
    together = token_logprobs(model, seqs, pad_id=0, batch_size=3)
    for a, b, s in zip(alone, together, seqs, strict=True):
        assert a.shape == (len(s) - 1,)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)  # float32 matmuls over different padded widths


def test_continue_greedy_matches_one_at_a_time_and_stops_at_eos() -> None:
    from tests.unit.test_scoring import make_tokenizer

    tok = make_tokenizer()
    model = make_model(tok)
    prompts = [[1, 5, 6, 7, 8], [1, 9], [1, 10, 11, 12]]
    alone = [continue_greedy(model, [p], 6, pad_id=0, eos_ids=[])[0] for p in prompts]
    together = continue_greedy(model, prompts, 6, pad_id=0, eos_ids=[], batch_size=3)
    assert together == alone
    assert all(len(c) == 6 for c in alone)
    # With the first generated token declared eos, the continuation is cut before it.
    first = alone[0][0]
    cut = continue_greedy(model, prompts[:1], 6, pad_id=0, eos_ids=[first])[0]
    assert cut == []
