"""Step functions: one optimizer step of a method through the real Unlearner, and the bare loop's step."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from experiments.bench.config import N_BATCHES
from experiments.bench.models import Batches, ModelSpec, collate
from unlearn.pipeline import Plan, build_reference
from unlearn.train.backend import Backend
from unlearn.train.loop import Unlearner

StepFn = Callable[[int], None]


def unlearner_step_fn(p: Plan, model: nn.Module, spec: ModelSpec, batches: Batches, device: str,
                      mixed_precision: str | None = None) -> StepFn:
    """One optimizer step of method `p` through the real Unlearner + Backend, as `unlearn.pipeline` wires it:
    the configured step strategy, and a frozen reference copy only where the run would keep one (otherwise
    NPO's reference log-probs are precomputed over the benchmark's forget batches when the runner is built)."""
    ref = build_reference(p, model)
    loop = dataclasses.replace(p.loop, batch_size=spec.batch_size, micro_batch_size=spec.micro_batch_size)
    u = Unlearner(model=model, forget_loss=p.forget_loss, retain_loss=p.retain_loss, rule=p.rule,
                  backend=Backend(device, mixed_precision=mixed_precision), make_optimizer=p.make_optimizer,
                  make_scheduler=None, collate=collate, cfg=loop, ref_model=ref, step=p.step)
    u.precompute_reference([ex for b in batches.forget for ex in b], [ex for b in batches.retain for ex in b])

    def step(k: int) -> None:
        u.step(*batches.pair(k))

    return step


def token_nll(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Plain token-mean NLL over answer tokens (what an ordinary fine-tuning loop computes)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shift = logits[:, :-1].float()
    return F.cross_entropy(shift.reshape(-1, shift.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                           ignore_index=-100)


def bare_step_fn(p: Plan, model: nn.Module, spec: ModelSpec, batches: Batches, device: str) -> StepFn:
    """The ceiling: forward+backward on the forget and the retain batch into one gradient set, one step.

    Batches are collated and on the device beforehand, and micro-batching follows `spec` like the loop's.
    """
    model = model.to(device).train()
    opt = p.make_optimizer([q for q in model.parameters() if q.requires_grad])
    size = spec.micro_batch_size or spec.batch_size
    pre = [[{k: v.to(device) for k, v in collate(rows[i : i + size]).items()}
            for i in range(0, len(rows), size)]
           for pair in zip(batches.forget, batches.retain, strict=True) for rows in pair]
    n_micro = len(pre[0])

    def step(k: int) -> None:
        opt.zero_grad()
        for micro in (pre[2 * (k % N_BATCHES)], pre[2 * (k % N_BATCHES) + 1]):
            for batch in micro:
                (token_nll(model, batch) / n_micro).backward()
        opt.step()

    return step


