"""torch FSDP2 (`fully_shard`): parameters, gradients and optimizer state sharded over ranks.

After each micro-batch's backward FSDP2 reduce-scatters the gradient, so every parameter's `.grad` is a
DTensor of which this rank holds one dim-0 shard (the mean over ranks of that shard). The forget and retain
gradients therefore never exist in full on any rank: GradSpace takes the dot products of the local shards and
sums them with one all-reduce, which equals the dot product of the full gradients because the shards are
disjoint and cover every entry exactly once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from unlearn.directions.gradspace import GradSpace
from unlearn.train.backend import BACKENDS, OptimizerFactory
from unlearn.train.backends.dist import DistributedBackend
from unlearn.train.checkpoint import load_sharded_checkpoint, save_sharded_checkpoint
from unlearn.train.grad_buffers import GradBuffers, ParamGradBuffers, local


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The submodules to shard one by one: transformers' `_no_split_modules` (the decoder layers).

    One FSDP unit per layer bounds the gathered (unsharded) parameters to one layer at a time; the root unit
    then holds what is left (embeddings, final norm, head), including tied weights, which must stay together.
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names and m is not model]


@BACKENDS.register("fsdp2")
class FSDP2Backend(DistributedBackend):
    """Fully sharded data parallelism on a 1-D device mesh (CPU/gloo or CUDA/NCCL).

    Mixed precision (`bf16`) follows FSDP2's MixedPrecisionPolicy: parameters are all-gathered and computed in
    bf16, gradients are reduced in float32 into float32 shards, and the optimizer steps float32 master shards (a
    model loaded in bf16 is upcast before sharding, so the shards really are float32).
    fp16 is refused: FSDP2 has no loss scaling here, and fp16 gradients of small losses underflow.
    The reference model is sharded the same way (it is as large as the model).
    """

    supported_precisions = ("bf16",)

    def __init__(self, device: str = "auto", mixed_precision: str | None = None,
                 gradient_checkpointing: bool = False, reshard_after_forward: bool = True,
                 process_group_timeout: float = 1800.0) -> None:
        super().__init__(device=device, mixed_precision=mixed_precision,
                         gradient_checkpointing=gradient_checkpointing, process_group_timeout=process_group_timeout)
        self.reshard_after_forward = bool(reshard_after_forward)
        self.mesh: DeviceMesh = init_device_mesh(self.device.type, (self.world_size,))
        self.space = GradSpace(all_reduce=self._all_reduce_sum)

    def _policy(self) -> MixedPrecisionPolicy:
        if self.param_dtype is None:
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=torch.float32)

    def _shard(self, model: nn.Module, reshard_after_forward: bool) -> nn.Module:
        policy = self._policy()
        for unit in shard_units(model):
            fully_shard(unit, mesh=self.mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
        fully_shard(model, mesh=self.mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
        return model

    def autocast_dtype(self) -> torch.dtype | None:
        return None  # the MixedPrecisionPolicy casts the gathered parameters itself

    def setup(self, model: nn.Module, make_optimizer: OptimizerFactory) -> nn.Module:
        model = self._master_weights(model)  # the sharded parameters are the master weights: float32 under bf16
        model = self._shard(self._prepare(model), self.reshard_after_forward)
        # fully_shard replaced every parameter by a sharded DTensor: the optimizer must be built afterwards, and
        # then only ever sees (and keeps state for) this rank's shards.
        self._params = [p for p in model.parameters() if p.requires_grad]
        if not self._params:
            raise ValueError("the model has no trainable parameters")
        self.model = model
        self.optimizer = make_optimizer(self._params)
        return model

    def export_model(self) -> nn.Module | None:
        """Gather the sharded parameters into a full CPU state dict on rank 0 and rebuild an unsharded model."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from unlearn.train.backends.dist import rebuild_full_model

        assert self.model is not None
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return rebuild_full_model(self.model, full) if self.rank == 0 else None

    # -- checkpoints: each rank writes and reads its own shards (safetensors), same world size to resume ----------
    def save_checkpoint(self, root: Path, step: int, extra: dict[str, Any], keep: int = 0) -> Path:
        assert self.model is not None and self.optimizer is not None
        return save_sharded_checkpoint(root, step, self.rank, self.world_size, self.model, self.optimizer, extra,
                                       self.barrier, keep=keep)

    def load_checkpoint(self, directory: Path) -> dict[str, Any]:
        assert self.model is not None and self.optimizer is not None
        return load_sharded_checkpoint(directory, self.rank, self.world_size, self.model, self.optimizer)

    def prepare_reference(self, ref_model: nn.Module) -> nn.Module:
        """Shard the frozen reference like the model; it is only run forward (gathered per layer, then freed)."""
        ref_model = self._prepare(ref_model.requires_grad_(False))
        return self._shard(ref_model, reshard_after_forward=True).eval()

    # -- parameters in the gradient's layout: this rank's dim-0 shards ----------------------------------------
    def grad_pieces(self) -> list[Tensor]:
        """The local shards of the (reduce-scattered) gradients; shard i lines up with `param_pieces()[i]`."""
        return local(self.grads())

    def param_pieces(self) -> list[Tensor]:
        """The local shards of the sharded parameters: views of the storage FSDP2 all-gathers from (the
        optimizer steps the same tensors in place)."""
        return local(list(self._params))

    def params_written(self) -> None:
        """Free every gathered (unsharded) copy, so the next forward all-gathers the rewritten shards.

        FSDP2 keeps the root unit's parameters gathered after a forward that has no backward (it expects the
        backward to need them), and a gathered copy is never written back to the shards or refreshed from them.
        """
        assert self.model is not None
        for module in self.model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()

    def _make_buffers(self, params: list[nn.Parameter]) -> GradBuffers:
        """DTensor gradients: one buffer per parameter, zeroed through its local shard (all this rank owns)."""
        return ParamGradBuffers(params)
