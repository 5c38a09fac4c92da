"""Execution backends: where gradients live and how an optimizer step is taken.

The loop is written against `Backend` only, so data parallelism and sharding (DDP, FSDP2, DeepSpeed ZeRO) add a
backend without touching the loop or any direction rule. A backend owns the model wrapper, the optimizer and
the gradient buffers; its `space` computes global inner products over *its* gradient pieces.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unlearn.directions.gradspace import GradSpace
from unlearn.errors import ConfigError
from unlearn.registry import Registry
from unlearn.train.capabilities import check_precision, check_trainer
from unlearn.train.checkpoint import load_checkpoint, save_checkpoint
from unlearn.train.grad_buffers import FlatGradBuffers, GradBuffers

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]

MIXED_PRECISION: dict[str | None, torch.dtype | None] = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_mixed_precision(value: str | None, allowed: tuple[str, ...]) -> torch.dtype | None:
    """Map `trainer.mixed_precision` to a dtype; a value the backend cannot honour is a ConfigError."""
    if value in (None, "no", "fp32", "float32"):
        return None
    if value not in MIXED_PRECISION or value not in allowed:
        raise ConfigError(
            f"trainer.mixed_precision: {value!r} is not supported by this backend; use one of "
            f"{', '.join(['null', *allowed])}"
        )
    return MIXED_PRECISION[value]


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in backward (transformers' implementation, non-reentrant).

    Non-reentrant checkpointing is the variant DDP's no_sync, FSDP2's per-layer hooks and ZeRO's gradient hooks
    all handle (the reentrant one runs each layer's backward outside the outer graph). The KV cache is turned
    off because it is useless in training and transformers refuses it under checkpointing.
    """
    # transformers 5 renamed it activation checkpointing (the old name warns and goes in v6).
    enable = getattr(model, "activation_checkpointing_enable", None)
    if callable(enable):
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        enable = getattr(model, "gradient_checkpointing_enable", None)
        if not callable(enable):
            raise ConfigError(
                f"trainer.gradient_checkpointing: {type(model).__name__} has no activation_checkpointing_enable()"
            )
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = False


def warn_if_training_half_precision(model: nn.Module) -> None:
    """Without mixed precision, a model loaded in bf16/fp16 is trained as it is: say what that costs."""
    half = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                   if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)})
    if half:
        warnings.warn(
            f"trainable parameters are {'/'.join(half)} and trainer.mixed_precision is null: the optimizer updates "
            "half-precision weights directly, and updates below their resolution (2^-8 relative for bf16) are "
            "lost. Set trainer.mixed_precision=bf16 for float32 master weights.",
            stacklevel=3,
        )


def upcast_master_weights(model: nn.Module) -> nn.Module:
    """float32 master weights for mixed precision: a model loaded in bf16/fp16 is upcast before the optimizer
    sees it. Adam updates at unlearning learning rates (1e-5 relative and less) fall below bf16's resolution
    (2^-8 relative) and would round away on half-precision weights."""
    if any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters()):
        model = model.float()  # float64 models are left alone: they already have more than float32 masters
    return model


class Backend:
    """Single-process backend; the base for distributed ones.

    Gradient buffers are double-buffered (`unlearn.train.grad_buffers`): `take_grads` hands the loop the
    accumulated forget gradients and installs the spare, zeroed set, so the retain pass accumulates into fresh
    buffers without a copy. Replicated backends keep each set contiguous (`.grad`s are views into it), so the
    loop's per-step work on gradients is a few large kernels.
    """

    rank: int = 0
    world_size: int = 1
    #: `trainer.mixed_precision` values this backend honours (besides null).
    supported_precisions: tuple[str, ...] = ("bf16",)

    def __init__(self, device: str | torch.device = "cpu", mixed_precision: str | None = None,
                 gradient_checkpointing: bool = False) -> None:
        """`mixed_precision=bf16`: float32 master weights (a half-precision model is upcast), forward passes under
        `torch.autocast(bf16)`. fp16 is refused: it needs a loss scaler (use DeepSpeed for fp16).
        `gradient_checkpointing`: recompute activations in backward (transformers' non-reentrant checkpointing).
        A precision this machine cannot run is a ConfigError here, before any model is placed."""
        check_precision(mixed_precision, device, self.supported_precisions)
        self.param_dtype = resolve_mixed_precision(mixed_precision, self.supported_precisions)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.device = torch.device(device)
        self.space = GradSpace()
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._params: list[nn.Parameter] = []
        self._buffers: GradBuffers | None = None
        self._buffers_params: list[nn.Parameter] | None = None

    # -- setup -------------------------------------------------------------------------------------------
    def _master_weights(self, model: nn.Module) -> nn.Module:
        """The model the optimizer will update: float32 under mixed precision, else as loaded (with a warning
        when that is half precision)."""
        if self.param_dtype is not None:
            return upcast_master_weights(model)
        warn_if_training_half_precision(model)
        return model

    def setup(self, model: nn.Module, make_optimizer: OptimizerFactory) -> nn.Module:
        """Place the model, build the optimizer over the trainable parameters; return the module to call."""
        model = self._master_weights(model)
        if self.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self.model = model.to(self.device)
        self._params = [p for p in model.parameters() if p.requires_grad]
        if not self._params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = make_optimizer(self._params)
        return self.model

    def prepare_reference(self, ref_model: nn.Module) -> nn.Module:
        """Place the frozen reference model like the trained one (sharded backends shard it too)."""
        return ref_model.to(self.device)

    # -- forward precision -------------------------------------------------------------------------------
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype forwards run in under `torch.autocast`; None where the wrapper casts by itself (FSDP2's
        MixedPrecisionPolicy, DeepSpeed's bf16/fp16 engine) or without mixed precision."""
        return self.param_dtype

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context for the objectives' forward passes (the trained and the reference model)."""
        dtype = self.autocast_dtype()
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

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

    # -- parameters in the gradient's layout (step strategies: inner steps, finite differences, line searches) --
    def grad_pieces(self) -> list[Tensor]:
        """The accumulated gradient, laid out entry for entry like `param_pieces()` (one tensor per trainable
        parameter here); writing into these tensors writes the gradient the optimizer steps with."""
        self.grads()  # re-adopt any replaced `.grad` into the buffers
        return [p.grad for p in self._params]  # type: ignore[misc]

    def param_pieces(self) -> list[Tensor]:
        """This rank's trained (master) parameter values, aligned with `grad_pieces()`: in-place writes change
        the parameters once `params_written()` has run. The default step never calls this."""
        return [p.data for p in self._params]

    def params_written(self) -> None:
        """Make forwards see in-place writes to `param_pieces()` (nothing to do when they are the parameters)."""

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

__all__ = ["BACKENDS", "Backend", "check_trainer"]  # check_trainer: the config planner's machine check
