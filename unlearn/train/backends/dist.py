"""What every multi-process backend shares: the process group, this rank's place in it, and global reductions.

A distributed backend is started once per process by a launcher (`torchrun`, the `deepspeed` launcher, or
anything that sets the same environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Rank, world
size and device are read from `torch.distributed`, never from the config, so one config runs unchanged on one
node or many. Communication is NCCL on CUDA and gloo on CPU, which is what makes the 2-process CPU tests
exercise the same code paths as a GPU cluster.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from unlearn.directions.gradspace import GradSpace
from unlearn.errors import ConfigError
from unlearn.train.backend import Backend, enable_gradient_checkpointing, resolve_mixed_precision
from unlearn.train.capabilities import check_precision


def init_process_group(timeout_s: float = 1800.0) -> None:
    """Join the process group described by the launcher's environment (idempotent).

    A group that already exists (created by the caller, or by a previous backend in the same process) is reused,
    so tests and scripts may build several backends one after another.
    """
    if dist.is_initialized():
        return
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(
            "trainer.backend: a distributed backend must be started by a launcher (torchrun or deepspeed); "
            f"environment variables {', '.join(missing)} are not set (see docs/distributed.md)"
        )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    kwargs = {}
    if backend == "nccl":
        # Binding the group to this rank's GPU lets NCCL set up its communicators eagerly and lets collectives
        # on the default group pick the right device without `torch.cuda.set_device` elsewhere.
        kwargs["device_id"] = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kwargs)


def resolve_device(device: str) -> torch.device:
    """`auto`: this rank's GPU (cuda:LOCAL_RANK) when CUDA is present, else the CPU."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


class DistributedBackend(Backend):
    """Base of the multi-process backends: joins the process group and provides the global reductions.

    Args:
        device: `auto` (this rank's GPU, else CPU) or an explicit device.
        mixed_precision: null, `bf16` or `fp16` where the subclass supports it.
        gradient_checkpointing: recompute activations in backward to save memory.
        process_group_timeout: seconds a collective (a barrier included) waits before the group fails
            (`trainer.process_group_timeout`). Ranks other than 0 wait at a barrier while rank 0 evaluates: set it
            above the longest evaluation (a full MMLU run on a 7B model takes tens of minutes; docs/distributed.md).
    """

    supported_precisions: tuple[str, ...] = ()  # subclasses list what they honour
    #: True when every rank holds the whole model and optimizer state (DDP), so the base class's rank-0
    #: checkpoint is complete. Sharded backends refuse checkpoints rather than write one rank's shard as if it
    #: were the whole state.
    replicated_state: bool = False

    def __init__(
        self,
        device: str = "auto",
        mixed_precision: str | None = None,
        gradient_checkpointing: bool = False,
        process_group_timeout: float = 1800.0,
    ) -> None:
        # Config first, process group second: a bad value, or a precision this machine cannot run, fails at once,
        # launcher or not.
        resolve_mixed_precision(mixed_precision, self.supported_precisions)
        check_precision(mixed_precision, device, self.supported_precisions)
        if isinstance(process_group_timeout, bool) or not isinstance(process_group_timeout, int | float) \
                or not process_group_timeout > 0:
            raise ConfigError(f"trainer.process_group_timeout: expected seconds > 0, got {process_group_timeout!r}")
        init_process_group(float(process_group_timeout))
        super().__init__(resolve_device(device), mixed_precision=mixed_precision,
                         gradient_checkpointing=gradient_checkpointing)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        # Subclasses whose gradient pieces are disjoint shards replace this with a summing GradSpace.
        self.space = GradSpace()

    def _all_reduce_sum(self, t: Tensor) -> None:
        """Sum `t` across ranks in place; GradSpace calls it once per step with its float64 partial sums."""
        dist.all_reduce(t, op=dist.ReduceOp.SUM)

    def _prepare(self, model: nn.Module) -> nn.Module:
        """Settings that must be applied before wrapping: checkpointing, then placement on this rank's device."""
        if self.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return model.to(self.device)

    def reduce_mean(self, value: float) -> float:
        """Mean of a logged scalar over ranks, so every rank logs the same (global) number."""
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world_size

    def save_checkpoint(self, root: Path, step: int, extra: dict[str, Any], keep: int = 0) -> Path:
        if not self.replicated_state:
            raise NotImplementedError(
                f"trainer.checkpoint_every: checkpoints are not implemented for {type(self).__name__} (sharded "
                "model/optimizer state); set trainer.checkpoint_every=0"
            )
        return super().save_checkpoint(root, step, extra, keep=keep)

    def load_checkpoint(self, directory: Path) -> dict[str, Any]:
        if not self.replicated_state:
            raise NotImplementedError(f"resume: checkpoints are not implemented for {type(self).__name__}")
        return super().load_checkpoint(directory)

    def barrier(self) -> None:
        """Wait for every rank (rank 0 writing a replicated checkpoint, for instance)."""
        dist.barrier()

    def prepare_reference(self, ref_model: nn.Module) -> nn.Module:
        """A frozen, replicated copy on this rank's device (sharded backends override this)."""
        ref_model = ref_model.to(self.device)
        if self.param_dtype is not None:
            ref_model = ref_model.to(self.param_dtype)
        return ref_model.requires_grad_(False).eval()


def rebuild_full_model(like: nn.Module, state_dict: dict[str, Tensor]) -> nn.Module:
    """An unsharded model of `like`'s class and config holding `state_dict`, built without a random init pass.

    Parameters are created on the meta device and then assigned from the gathered tensors, so a 7B model is
    not materialised twice; tied weights are re-tied afterwards.
    """
    config = getattr(like, "config", None)
    if config is None:
        raise TypeError(f"cannot rebuild {type(like).__name__}: it has no `config`")
    with torch.device("meta"):
        fresh = type(like)(config)
    fresh.load_state_dict(state_dict, strict=False, assign=True)
    if hasattr(fresh, "tie_weights"):
        fresh.tie_weights()
    # Non-persistent buffers (rotary frequencies) are not in any state dict; they are never sharded, so every
    # rank's copy in `like` is complete.
    source = dict(like.named_buffers())
    for name, buf in list(fresh.named_buffers()):
        if buf.is_meta and name in source:
            owner, _, leaf = name.rpartition(".")
            fresh.get_submodule(owner)._buffers[leaf] = source[name].detach().to("cpu", copy=True)
    missing = [n for n, t in list(fresh.named_parameters()) + list(fresh.named_buffers()) if t.is_meta]
    if missing:
        raise RuntimeError(f"gathered state dict lacks {missing[:5]}")
    return fresh.eval()
