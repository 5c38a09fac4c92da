"""Losses against values computed by hand on a 3-token vocabulary."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from unlearn.errors import ConfigError
from unlearn.objectives import FORGET_LOSSES, RETAIN_LOSSES, build_objective


class FixedLogits(nn.Module):
    """A 'model' whose logits are given, so losses can be checked against hand arithmetic."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.logits)


# One sequence of 3 tokens; labels mark tokens 1 and 2 as the answer. Logits at position t predict token t+1.
# Position 0: logits [0, ln 3, 0] -> p = [1/5, 3/5, 1/5]; the answer token 1 has p = 3/5.
# Position 1: logits [0, 0, 0]   -> p = 1/3 each; the answer token 2 has p = 1/3.
# So logp(y|x) = ln(3/5) + ln(1/3) = ln(1/5), |y| = 2. The reference (all-zero logits) has logp_ref = ln(1/9).
BATCH = {
    "input_ids": torch.tensor([[0, 1, 2]]),
    "attention_mask": torch.ones(1, 3, dtype=torch.long),
    "labels": torch.tensor([[-100, 1, 2]]),
}
MODEL_LOGITS = torch.tensor([[[0.0, math.log(3.0), 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
LOGP = math.log(1 / 5)
LOGP_REF = math.log(1 / 9)


def _eval(registry, cfg) -> float:
    model, ref = FixedLogits(MODEL_LOGITS), FixedLogits(torch.zeros(1, 3, 3))
    return float(build_objective(registry, cfg)(model, BATCH, ref).detach())


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_ga_is_the_token_mean_answer_logprob() -> None:
    # Default: minus the token-mean NLL, as TOFU's and open-unlearning's GA: ln(1/5) / 2 = -0.8047.
    assert _eval(FORGET_LOSSES, {"name": "ga"}) == pytest.approx(LOGP / 2)
    assert _eval(FORGET_LOSSES, {"name": "ga", "reduction": "sum"}) == pytest.approx(LOGP)  # ln 0.2 = -1.6094
    with pytest.raises(ConfigError, match=r"method\.forget\.reduction"):
        build_objective(FORGET_LOSSES, {"name": "ga", "reduction": "max"})


def test_nll_is_token_mean() -> None:
    assert _eval(RETAIN_LOSSES, {"name": "nll"}) == pytest.approx(-LOGP / 2)  # 0.8047


def test_npo_by_hand() -> None:
    # log-ratio = ln(1/5) - ln(1/9) = ln 1.8; loss = -(2/0.1) * log sigmoid(-0.1 ln 1.8) = 20 ln(1 + 1.8^0.1) = 14.46
    expected = -(2 / 0.1) * _log_sigmoid(-0.1 * math.log(1.8))
    assert expected == pytest.approx(20 * math.log(1 + 1.8**0.1))
    assert _eval(FORGET_LOSSES, {"name": "npo", "beta": 0.1}) == pytest.approx(expected, rel=1e-6)


def test_simnpo_by_hand() -> None:
    # -(2/2.5) * log sigmoid(-(2.5/2) * ln(1/5) - 0.5) = 0.8 * ln(1 + exp(-(1.25 ln 5 - 0.5)))
    expected = 0.8 * math.log1p(math.exp(-(1.25 * math.log(5) - 0.5)))
    got = _eval(FORGET_LOSSES, {"name": "simnpo", "beta": 2.5, "alpha": 0.5})
    assert got == pytest.approx(expected, rel=1e-6)


def test_kl_by_hand() -> None:
    # KL(p_ref || p) at position 0 with p_ref uniform, p = [1/5, 3/5, 1/5]:
    #   1/3 [ln(5/3) + ln(5/9) + ln(5/3)]; position 1: p = p_ref, KL 0. Mean over the 2 answer tokens.
    pos0 = (math.log(5 / 3) + math.log(5 / 9) + math.log(5 / 3)) / 3
    assert _eval(RETAIN_LOSSES, {"name": "kl"}) == pytest.approx(pos0 / 2, rel=1e-6)


def test_losses_are_per_example_means() -> None:
    # Two copies of the example give the same loss: each loss is a mean over examples, so micro-batching works.
    batch2 = {k: v.repeat(2, 1) for k, v in BATCH.items()}
    model = FixedLogits(MODEL_LOGITS.repeat(2, 1, 1))
    ref = FixedLogits(torch.zeros(2, 3, 3))
    for reg, name in [(FORGET_LOSSES, "npo"), (FORGET_LOSSES, "simnpo"), (RETAIN_LOSSES, "kl")]:
        obj = build_objective(reg, {"name": name})
        one = float(obj(FixedLogits(MODEL_LOGITS), BATCH, FixedLogits(torch.zeros(1, 3, 3))))
        assert float(obj(model, batch2, ref)) == pytest.approx(one)


def test_bad_loss_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"method.forget.name.*'npoo'"):
        build_objective(FORGET_LOSSES, {"name": "npoo"})
    with pytest.raises(ConfigError, match=r"method.forget.beta"):
        build_objective(FORGET_LOSSES, {"name": "npo", "beta": -1})
    with pytest.raises(ConfigError, match=r"method.retain.name"):
        build_objective(RETAIN_LOSSES, {})
