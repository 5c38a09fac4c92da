"""Retain losses, NLL and KL to the reference (docs/methods.md#retain-losses): each keeps retain knowledge."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearn.objectives.base import RETAIN_LOSSES, Objective, _forward_logits, sequence_logp, upcast


@RETAIN_LOSSES.register("nll")
class NLL(Objective):
    """Token-mean cross-entropy of the answer, `-logp_theta(y|x) / |y|`, averaged over examples.

    Per-example normalisation (rather than one mean over all tokens of the batch) keeps the loss a mean of
    per-example terms, so gradient accumulation over micro-batches is exact.
    """

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], ref_model: nn.Module | None) -> Tensor:
        logp, length = sequence_logp(model, batch)
        return (-logp / length).mean()


@RETAIN_LOSSES.register("kl")
class KL(Objective):
    """Token-level `KL(p_ref || p_theta)` over answer positions, mean per example, then over examples.

    Keeps the whole next-token distribution on retain data close to the model before unlearning, not just the
    likelihood of one answer.
    """

    needs_ref = True

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], ref_model: nn.Module | None) -> Tensor:
        ref = self._require_ref(ref_model)
        mask = (batch["labels"][:, 1:] != -100).float()
        with torch.no_grad():  # reference first, so its forward's temporaries are gone before the graph is built
            logp = F.log_softmax(upcast(_forward_logits(ref, batch)[:, :-1]), dim=-1)
        logq = F.log_softmax(upcast(_forward_logits(model, batch)[:, :-1]), dim=-1)
        token_kl = (logp.exp() * (logp - logq)).sum(dim=-1)
        per_example = (token_kl * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return per_example.mean()


__all__ = ["KL", "NLL", "sequence_logp"]
