"""The unlearning loop.

The loop samples the step's forget and retain examples, cuts them into micro-batches and hands them to the
configured step strategy (`unlearn.train.steps`). The default, `direction`, is:
  1. forget pass: backward of the forget loss over every micro-batch of the step -> g_f (summed);
  2. retain pass: the same for the retain loss -> g_r;
  3. the direction rule combines them (inner products global, float64-accumulated, via the backend's GradSpace);
  4. clipping, if enabled, acts on the combined direction u;
  5. u is written into the gradient buffers and the optimizer steps.
Other strategies (OFMU, NGDiff's adaptive lr) take more gradients or Hessian-vector products per step. The loop
names no loss, no rule and no strategy: it sees `Objective`s, a `DirectionRule`, a `StepStrategy` and a `Backend`.
A strategy's state and a precomputed reference travel in the checkpoints with the scheduler's.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unlearn.directions.base import DirectionRule
from unlearn.errors import ConfigError
from unlearn.objectives.base import Objective
from unlearn.train.backend import BACKENDS, Backend
from unlearn.train.reference import AdapterDisabledReference, PrecomputedReference
from unlearn.train.steps import StepContext, StepStrategy, build_step

Example = dict[str, list[int]]
Collate = Callable[[Sequence[Example]], dict[str, Tensor]]
StepCallback = Callable[[dict[str, float]], None]


@dataclass
class LoopConfig:
    """Step-level settings. `batch_size` is global (all ranks, all micro-batches of one step)."""

    batch_size: int = 32
    micro_batch_size: int | None = None
    epochs: float = 10.0
    max_steps: int | None = None
    max_grad_norm: float = 0.0
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"trainer.batch_size: must be >= 1, got {self.batch_size}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError(f"trainer.micro_batch_size: must be >= 1, got {self.micro_batch_size}")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 0:
            raise ConfigError("trainer.checkpoint_every / trainer.keep_checkpoints: must be >= 0")
        if self.epochs <= 0 and not self.max_steps:
            raise ConfigError("trainer.epochs: must be > 0 (or set trainer.max_steps)")

    def total_steps(self, n_forget: int) -> int:
        if self.max_steps:
            return int(self.max_steps)
        return max(1, math.ceil(self.epochs * math.ceil(n_forget / self.batch_size)))


class ForgetRetainSampler:
    """Yields (forget indices, retain indices) per step.

    The forget set is walked in shuffled epochs (the step count is defined by it); retain examples are drawn
    from an independent shuffled cycle of the same batch size. Deterministic in the seed.
    """

    def __init__(self, n_forget: int, n_retain: int, batch_size: int, seed: int) -> None:
        if n_forget == 0 or n_retain == 0:
            raise ConfigError(f"benchmark: empty forget ({n_forget}) or retain ({n_retain}) set")
        self.n_forget, self.n_retain, self.batch_size = n_forget, n_retain, batch_size
        self.rng = random.Random(seed)

    def _cycle(self, n: int) -> Iterator[int]:
        while True:
            order = list(range(n))
            self.rng.shuffle(order)
            yield from order

    def __iter__(self) -> Iterator[tuple[list[int], list[int]]]:
        retain = self._cycle(self.n_retain)
        while True:
            order = list(range(self.n_forget))
            self.rng.shuffle(order)
            for start in range(0, self.n_forget, self.batch_size):
                f = order[start : start + self.batch_size]
                yield f, [next(retain) for _ in range(len(f))]


class Unlearner:
    """Runs BLUR-style unlearning: any forget loss, any retain loss, any direction rule, any backend."""

    def __init__(
        self,
        model: nn.Module,
        forget_loss: Objective,
        retain_loss: Objective,
        rule: DirectionRule,
        backend: Backend,
        make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
        make_scheduler: Callable[[torch.optim.Optimizer, int], Any] | None,
        collate: Collate,
        cfg: LoopConfig,
        ref_model: nn.Module | AdapterDisabledReference | None = None,
        step: StepStrategy | None = None,
    ) -> None:
        """`ref_model`: the frozen reference copy, or under LoRA `AdapterDisabledReference(model)` (the trained
        model itself with adapters off; no copy). Without one, objectives that only need the reference's
        sequence log-probs (NPO) get them precomputed on their example set before the first step
        (`unlearn.train.reference`); objectives that need its forward (KL) require one of the two.
        `step`: the step strategy (default: the `direction` step with `rule`)."""
        self.forget_loss, self.retain_loss, self.rule = forget_loss, retain_loss, rule
        self.backend, self.collate, self.cfg = backend, collate, cfg
        for objective in (forget_loss, retain_loss):  # fixed random state (RMU's v) from the unwrapped model
            objective.setup(model, seed=cfg.seed)
        self.step_strategy = step if step is not None else build_step(None)
        self.step_strategy.check_backend(backend_name(backend))
        self.model = backend.setup(model, make_optimizer)
        self.ref_model: nn.Module | AdapterDisabledReference | None
        if isinstance(ref_model, AdapterDisabledReference):
            if unwrap(self.model) is not ref_model.module:
                raise ValueError("the adapter-disabled reference must wrap the model being unlearned")
            self.ref_model = ref_model  # the trained model itself: nothing to place, shard or copy
        else:
            self.ref_model = backend.prepare_reference(ref_model) if ref_model is not None else None
        self.precomputed: PrecomputedReference | None = None
        needing = [o for o in (forget_loss, retain_loss) if o.needs_ref]
        if self.ref_model is None and any(o.ref_kind != "sequence_logp" for o in needing):
            raise ConfigError("method: the chosen losses need a reference model, but none was given")
        self._make_scheduler = make_scheduler
        self.scheduler = None

    # -- the reference -------------------------------------------------------------------------------------
    @property
    def precomputes_reference(self) -> bool:
        """True when the reference's log-probs are precomputed instead of kept as a model."""
        return self.ref_model is None and (self.forget_loss.needs_ref or self.retain_loss.needs_ref)

    @property
    def reference(self) -> nn.Module | AdapterDisabledReference | PrecomputedReference | None:
        """What the objectives get as their reference: the frozen copy, the adapter-disabled model, or the
        precomputed log-probs."""
        return self.ref_model if self.ref_model is not None else self.precomputed

    def _reference_examples(self, forget: Sequence[Example], retain: Sequence[Example]) -> list[Example]:
        return [*(forget if self.forget_loss.needs_ref else []), *(retain if self.retain_loss.needs_ref else [])]

    def precompute_reference(self, forget: Sequence[Example], retain: Sequence[Example]) -> None:
        """Compute the reference log-probs with the model as it is now (before unlearning, it is the reference)."""
        if not self.precomputes_reference:
            return
        b = self.backend
        size = self.cfg.micro_batch_size or -(-self.cfg.batch_size // b.world_size)
        self.precomputed = PrecomputedReference.compute(self.model, self._reference_examples(forget, retain),
                                                        self.collate, b.device, b.autocast, size)

    # -- one pass over the micro-batches of one step -------------------------------------------------------
    def _micro_batches(self, examples: Sequence[Example]) -> list[tuple[dict[str, Tensor], float]]:
        """This rank's share of the step's examples, cut into micro-batches with their loss weights.

        Backends average gradients over ranks (the DDP convention), so a micro-batch of n examples out of a
        global batch of N is weighted n * world_size / N: the average over ranks of the weighted sums is then
        the global mean loss exactly, even when N does not divide evenly among ranks.

        Every rank runs the same number of micro-batches, because data-parallel and sharded backends pair their
        collectives across ranks (a rank with one backward fewer would leave the others waiting forever). A rank
        with fewer examples (the last batch of an epoch, say) makes up the count with zero-weight repeats.
        """
        b = self.backend
        examples = list(examples)
        if not examples:
            raise ConfigError("trainer.batch_size: a step got no examples")
        mine = examples[b.rank :: b.world_size]
        busiest = -(-len(examples) // b.world_size)  # examples on rank 0, the most any rank gets
        size = self.cfg.micro_batch_size or busiest
        chunks = [mine[i : i + size] for i in range(0, len(mine), size)]
        scale = b.world_size / len(examples)
        weighted = [(c, len(c) * scale) for c in chunks]
        weighted += [(examples[:1], 0.0)] * (-(-busiest // size) - len(chunks))
        return [({k: v.to(b.device) for k, v in self.collate(c).items()}, w) for c, w in weighted]

    def _accumulate(self, objective: Objective, micro: list[tuple[dict[str, Tensor], float]]) -> float:
        """Backward of `objective` over all micro-batches; the gradient buffers end up holding the sum."""
        total = 0.0
        for i, (batch, weight) in enumerate(micro):
            with self.backend.accumulating(last=i == len(micro) - 1):
                with self.backend.autocast():  # forwards only: backward runs outside autocast, as torch advises
                    loss = objective(self.model, batch, self.reference) * weight
                self.backend.backward(loss)
            total += float(loss.detach())
        return self.backend.reduce_mean(total)

    def step(self, forget: Sequence[Example], retain: Sequence[Example]) -> dict[str, float]:
        """One optimizer step on a global forget batch and a global retain batch; returns diagnostics."""
        if self.precomputes_reference and self.precomputed is None:
            raise RuntimeError("Unlearner.step: the reference log-probs are not precomputed yet; call "
                               "precompute_reference(forget, retain) first (run() does it)")
        self.model.train()
        ctx = StepContext(self, self._micro_batches(forget), self._micro_batches(retain))
        return self.step_strategy.step(ctx)

    def run(
        self,
        forget_examples: Sequence[Example],
        retain_examples: Sequence[Example],
        on_step: StepCallback | None = None,
        checkpoint_dir: Path | None = None,
        resume_from: Path | None = None,
    ) -> list[dict[str, float]]:
        """Unlearn for the configured number of steps; returns (and streams to `on_step`) one row per step.

        With `checkpoint_dir` and `cfg.checkpoint_every`, a checkpoint is written every N steps. `resume_from`
        (a checkpoint directory) restores model, optimizer, scheduler and RNG state and replays the sampler to
        the saved step, so the resumed run takes exactly the steps the uninterrupted one would have.
        """
        total = self.cfg.total_steps(len(forget_examples))
        if self._make_scheduler is not None and self.backend.optimizer is not None:
            self.scheduler = self._make_scheduler(self.backend.optimizer, total)
        sampler = iter(
            ForgetRetainSampler(len(forget_examples), len(retain_examples), self.cfg.batch_size, self.cfg.seed)
        )
        start = 0
        if resume_from is not None:
            state = self.backend.load_checkpoint(Path(resume_from))
            start = int(state["step"])
            saved = state.get("objectives") or {}
            self.forget_loss.load_state_dict(saved.get("forget") or {})
            self.retain_loss.load_state_dict(saved.get("retain") or {})
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if state.get("step_state"):
                self.step_strategy.load_state_dict(state["step_state"])
            if self.precomputes_reference:
                if "reference" not in state:
                    raise ConfigError(f"resume: {resume_from} holds no precomputed reference log-probs")
                self.precomputed = PrecomputedReference.from_state(
                    state["reference"], self._reference_examples(forget_examples, retain_examples), self.collate)
            for _ in range(start):  # the sampler is a pure function of the seed: replay it to the saved step
                next(sampler)
        elif self.precomputes_reference:
            self.precompute_reference(forget_examples, retain_examples)
        rows = []
        for step in range(start + 1, total + 1):
            f_idx, r_idx = next(sampler)
            t0 = time.perf_counter()
            row = self.step([forget_examples[i] for i in f_idx], [retain_examples[i] for i in r_idx])
            row = {"step": step, **row, "step_time": time.perf_counter() - t0}
            rows.append(row)
            if on_step is not None:
                on_step(row)
            every = self.cfg.checkpoint_every
            if checkpoint_dir is not None and every and (step % every == 0 or step == total):
                extra: dict[str, Any] = {
                    "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                    "objectives": {"forget": self.forget_loss.state_dict(), "retain": self.retain_loss.state_dict()},
                }
                if self.step_strategy.state_dict():
                    extra["step_state"] = self.step_strategy.state_dict()
                if self.precomputed is not None:
                    extra["reference"] = self.precomputed.state()
                self.backend.save_checkpoint(Path(checkpoint_dir), step, extra, keep=self.cfg.keep_checkpoints)
        return rows


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / DeepSpeed wrappers (both keep it as `.module`)."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def backend_name(backend: Backend) -> str:
    """The `trainer.backend` name a backend instance was registered under (its class's, else "single")."""
    for name in BACKENDS.names():
        if BACKENDS.get(name) is type(backend):
            return name
    return "single" if type(backend) is Backend else type(backend).__name__
