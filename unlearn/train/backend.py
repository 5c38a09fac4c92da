"""Execution backends: where gradients live and how an optimizer step is taken.

The loop is written against `Backend` only, so data parallelism and sharding (DDP, FSDP2, DeepSpeed ZeRO) add a
backend without touching the loop or any direction rule. A backend owns the model wrapper, the optimizer and
the gradient buffers; its `space` computes global inner products over *its* gradient pieces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unlearn.directions.gradspace import GradSpace
from unlearn.registry import Registry
from unlearn.train.checkpoint import load_checkpoint, save_checkpoint
from unlearn.train.grad_buffers import FlatGradBuffers, GradBuffers

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


class Backend:
    """Single-process backend; the base for distributed ones.

    Gradient buffers are double-buffered (`unlearn.train.grad_buffers`): `take_grads` hands the loop the
    accumulated forget gradients and installs the spare, zeroed set, so the retain pass accumulates into fresh
    buffers without a copy. Replicated backends keep each set contiguous (`.grad`s are views into it), so the
    loop's per-step work on gradients is a few large kernels.
    """

    rank: int = 0
    world_size: int = 1

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.space = GradSpace()
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._params: list[nn.Parameter] = []
        self._buffers: GradBuffers | None = None
        self._buffers_params: list[nn.Parameter] | None = None

    # -- setup -------------------------------------------------------------------------------------------
    def setup(self, model: nn.Module, make_optimizer: OptimizerFactory) -> nn.Module:
        """Place the model, build the optimizer over the trainable parameters; return the module to call."""
        self.model = model.to(self.device)
        self._params = [p for p in model.parameters() if p.requires_grad]
        if not self._params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = make_optimizer(self._params)
        return self.model

    def prepare_reference(self, ref_model: nn.Module) -> nn.Module:
        """Place the frozen reference model like the trained one (sharded backends shard it too)."""
        return ref_model.to(self.device)

    # -- gradients ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def accumulating(self, last: bool) -> Iterator[None]:
        """Context for one micro-batch's backward; DDP skips its all-reduce unless `last`."""
        yield

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def _make_buffers(self, params: list[nn.Parameter]) -> GradBuffers:
        """The gradient layout: contiguous sets by default; backends with sharded DTensor grads override."""
        return FlatGradBuffers(params)

    def _grad_buffers(self) -> GradBuffers:
        """The buffers for the current parameter list (built on first use, rebuilt if setup ran again)."""
        if not self._params:
            raise RuntimeError("Backend.setup() must run before gradients are used")
        if self._buffers is None or self._buffers_params is not self._params:
            self._buffers = self._make_buffers(self._params)
            self._buffers_params = self._params
        return self._buffers

    def grads(self) -> list[Tensor]:
        """The accumulated gradients: tensors that together hold every trainable gradient entry of this rank
        exactly once (flat buffers here; per-parameter shards or flat partitions in sharded backends)."""
        return self._grad_buffers().current()

    def zero_grads(self) -> None:
        self._grad_buffers().zero()

    def take_grads(self) -> list[Tensor]:
        """Return the accumulated gradients and install a zeroed spare set in their place."""
        return self._grad_buffers().take()

    # -- step --------------------------------------------------------------------------------------------
    def step(self) -> None:
        """Optimizer step with the update direction the loop wrote into the gradient buffers."""
        assert self.optimizer is not None
        self.optimizer.step()

    def reduce_mean(self, value: float) -> float:
        """Mean of a logged scalar across ranks (identity for one process)."""
        return value

    # -- the trained model -------------------------------------------------------------------------------
    def export_model(self) -> nn.Module | None:
        """The full, unwrapped trained model on rank 0 (None on other ranks), for evaluation and saving.

        Collective under sharding: every rank must call it. Replicated backends return the module they hold;
        sharded ones gather a full state dict onto rank 0 and load it into an unsharded copy.
        """
        return self.model

    # -- checkpoints -------------------------------------------------------------------------------------
    def save_checkpoint(self, root: Path, step: int, extra: dict[str, Any], keep: int = 0) -> Path:
        """Write model, optimizer and `extra` (loop state) as checkpoint `step`; sharded backends override.

        Replicated state (one process, DDP) is written by rank 0 only; the others wait for it.
        """
        assert self.model is not None and self.optimizer is not None
        from unlearn.train.checkpoint import step_dir

        if self.rank == 0:  # the unwrapped module, so files carry plain parameter names (no DDP `module.`)
            save_checkpoint(root, step, getattr(self.model, "module", self.model), self.optimizer, extra, keep=keep)
        self.barrier()
        return step_dir(root, step)

    def load_checkpoint(self, directory: Path) -> dict[str, Any]:
        """Restore model and optimizer from `directory`; return the loop state saved with them."""
        assert self.model is not None and self.optimizer is not None
        return load_checkpoint(directory, getattr(self.model, "module", self.model), self.optimizer)

    def barrier(self) -> None:
        """Wait for every rank (no-op for one process)."""


BACKENDS: Registry[Backend] = Registry("trainer backend", "trainer.backend")
BACKENDS.register("single")(Backend)
