"""Forget losses: GA, NPO, SimNPO (docs/methods.md#forget-losses). Minimising each pushes the forget answers down."""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from unlearn.errors import ConfigError
from unlearn.objectives.base import FORGET_LOSSES, Objective, reference_logp, sequence_logp


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise ConfigError(f"method.forget.{name}: must be > 0, got {value}")
    return float(value)


@FORGET_LOSSES.register("ga")
class GradientAscent(Objective):
    """GA: minimise the answer's log-likelihood, i.e. ascend the NLL (docs/methods.md#ga).

    `reduction="token_mean"` (the default) takes `logp_theta(y|x) / |y|`, minus the token-mean NLL that TOFU's and
    open-unlearning's GA/GradDiff ascend, so GradDiff weighs its forget and retain terms as the published baselines
    do; `"sum"` takes the sum over answer tokens (this repository's earlier form: the forget term then outweighs the
    token-mean retain NLL by the mean answer length). Either is a mean over examples, so accumulation stays exact.
    Unbounded below, which is why GA collapses a model quickly; kept as the simplest baseline.
    """

    def __init__(self, reduction: str = "token_mean") -> None:
        if reduction not in ("token_mean", "sum"):
            raise ConfigError(f"method.forget.reduction: expected token_mean or sum, got {reduction!r}")
        self.reduction = reduction

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], ref_model: nn.Module | None) -> Tensor:
        logp, length = sequence_logp(model, batch)
        return (logp / length).mean() if self.reduction == "token_mean" else logp.mean()


@FORGET_LOSSES.register("npo")
class NPO(Objective):
    """NPO: `-(2/beta) * log sigmoid(-beta * (logp_theta - logp_ref))`, averaged over examples.

    Bounded version of GA: once the model's log-likelihood is well below the reference's, the sigmoid saturates
    and the gradient vanishes, so the model is not driven to collapse.
    """

    needs_ref = True
    ref_kind = "sequence_logp"  # only logp_ref(y|x): precomputable once (unlearn.train.reference)

    def __init__(self, beta: float = 0.1) -> None:
        self.beta = _positive("beta", beta)

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], ref_model: nn.Module | None) -> Tensor:
        ref = self._require_ref(ref_model)
        # Reference first: its logits are freed before the trained model's graph (and logits) are alive, which
        # keeps NPO's peak memory at GradDiff's plus the reference weights.
        ref_logp = reference_logp(ref, batch)
        logp, _ = sequence_logp(model, batch)
        log_ratio = logp - ref_logp
        return (-(2.0 / self.beta) * F.logsigmoid(-self.beta * log_ratio)).mean()


@FORGET_LOSSES.register("simnpo")
class SimNPO(Objective):
    """SimNPO: `-(2/beta) * log sigmoid(-(beta/|y|) * logp_theta - alpha)`; no reference model.

    Length-normalises the log-likelihood so long answers are not unlearned more than short ones; `alpha` is the
    reward margin (gamma in the SimNPO paper).
    """

    def __init__(self, beta: float = 2.5, alpha: float = 0.0) -> None:
        self.beta = _positive("beta", beta)
        self.alpha = float(alpha)

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], ref_model: nn.Module | None) -> Tensor:
        logp, length = sequence_logp(model, batch)
        return (-(2.0 / self.beta) * F.logsigmoid(-(self.beta / length) * logp - self.alpha)).mean()
