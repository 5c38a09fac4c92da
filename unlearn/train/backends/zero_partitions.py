"""Where each DeepSpeed optimizer keeps this rank's share of the averaged gradient (DeepSpeed 0.19.8).

The unlearning loop needs, for each of its two passes (forget, retain), the gradient accumulated over the pass's
micro-batches; it then combines them into u and the optimizer steps with u. Under ZeRO the gradient is never
assembled on one rank: after the reduction at a pass's accumulation boundary each rank holds only its partition.
This module reads those partitions, starts a fresh accumulation for the next pass, and installs u where the
optimizer's `step()` reads its gradient. It is the only module that touches DeepSpeed internals, so an upgrade
that moves them breaks here, and `tests/distributed` says so.

| optimizer (engine.optimizer)             | this rank's gradient piece after a pass           | pieces are  |
|------------------------------------------|---------------------------------------------------|-------------|
| torch optimizer (ZeRO-0, fp32)           | every `param.grad`, all-reduced (mean) in full    | replicated  |
| DeepSpeedZeroOptimizer (ZeRO-1/2)        | `averaged_gradients[g]`: group g's flat partition | disjoint    |
| BF16_Optimizer (ZeRO-1, bf16, fp32 accum)| `fp32_groups_gradient_flat_partition[g]`          | disjoint    |
| DeepSpeedZeroOptimizer_Stage3 (ZeRO-3)   | `grad_partitions_flat_buffer` (all params)        | disjoint    |

"Disjoint" pieces are slices of the flat (zero-padded) gradient that no two ranks share and that together cover
every entry once, so the sum over ranks of the local dot products is the global dot product. Every piece is
returned unscaled (divided by the fp16 loss scale, which is 1 otherwise) and installed re-scaled, because
DeepSpeed unscales in `step()`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from unlearn.train.grad_buffers import ParamGradBuffers


class GradPieces:
    """This rank's pieces of the gradient held by one DeepSpeed optimizer.

    Protocol, once per optimizer step: `clear()`; forget pass; `take()`; retain pass; `current()`;
    the loop writes u into the tensors `current()` returned; `install(those)`; engine step.
    """

    #: True when pieces are disjoint slices (GradSpace must all-reduce), False when replicated.
    sharded: bool = True

    def clear(self) -> None:
        """Start a fresh accumulation: the next pass's gradient must not include the previous one."""
        raise NotImplementedError

    def current(self) -> list[Tensor]:
        """This rank's pieces of the gradient of the pass just finished (unscaled; may alias DeepSpeed buffers)."""
        raise NotImplementedError

    def take(self) -> list[Tensor]:
        """Like `current()`, but owned by the caller: they survive `clear()` and the next pass."""
        raise NotImplementedError

    def install(self, pieces: list[Tensor]) -> None:
        """Make `pieces` (as returned by `current()`, rewritten in place) the gradient of the next step."""
        raise NotImplementedError


def _loss_scale(optimizer: Any) -> float:
    return float(getattr(optimizer, "loss_scale", 1.0) or 1.0)


class ReplicatedGrads(GradPieces):
    """ZeRO stage 0 in fp32: the engine all-reduces `param.grad` in full at the boundary, like DDP.

    The forget gradients are handed over by swapping in a spare set of per-parameter buffers (no copy). They
    are not made views of one flat buffer as in the single-process backend: the engine's own gradient
    bookkeeping at stage 0 is left exactly as DeepSpeed expects it.
    """

    sharded = False

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self._buffers = ParamGradBuffers(params)

    def clear(self) -> None:
        self._buffers.zero()

    def current(self) -> list[Tensor]:
        return self._buffers.current()

    def take(self) -> list[Tensor]:
        return self._buffers.take()

    def install(self, pieces: list[Tensor]) -> None:
        """Nothing to do: the pieces are the `param.grad` tensors the optimizer reads."""


class Stage12Partitions(GradPieces):
    """ZeRO-1/2 (`DeepSpeedZeroOptimizer`): one flat partition per parameter group.

    At a boundary the epilogue sets `averaged_gradients[g]` to the list of tensors tiling this rank's partition
    of group g (views into that backward's reduction buffers plus zero padding) or, with a separate fp32
    accumulation buffer, a list that carries the flat buffer as `.flat_partition`. We flatten it once into a
    tensor we own and reset the slot to None, which makes the next pass allocate fresh buffers instead of
    accumulating into ours. `step()` flattens `averaged_gradients[g]` into the fp32 master partition's `.grad`;
    installing `[u_g]` there makes it step with u.
    """

    def __init__(self, optimizer: Any) -> None:
        self.opt = optimizer
        self.n_groups = len(optimizer.bit16_groups)

    def _flat(self, g: int) -> Tensor:
        pieces = self.opt.averaged_gradients.get(g)
        size = int(self.opt.partition_size[g])
        if pieces is None:
            # no gradient reached this group (e.g. frozen by the objective): an all-zero partition
            dtype = self.opt.single_partition_of_fp32_groups[g].dtype
            return torch.zeros(size, dtype=dtype, device=self.opt.single_partition_of_fp32_groups[g].device)
        flat = getattr(pieces, "flat_partition", None)
        flat = flat.view(-1) if flat is not None else torch.cat([t.reshape(-1) for t in pieces])
        if flat.numel() != size:
            raise RuntimeError(f"ZeRO partition of group {g} has {flat.numel()} elements, expected {size}")
        return flat

    def clear(self) -> None:
        # zero_grad drops `param.grad` and the fp32 `param.grad_accum` that ZeRO-1 accumulates into under fp16.
        self.opt.zero_grad(set_to_none=True)
        for g in range(self.n_groups):
            self.opt.averaged_gradients[g] = None
            self.opt.all_grad_tensors[g] = None

    def current(self) -> list[Tensor]:
        scale = _loss_scale(self.opt)
        out = []
        for g in range(self.n_groups):
            flat = self._flat(g)
            self.opt.averaged_gradients[g] = None  # the next pass must not accumulate into `flat`
            out.append(flat.div_(scale) if scale != 1.0 else flat)
        return out

    def take(self) -> list[Tensor]:
        return self.current()  # already owned: flattened copies or detached flat buffers

    def install(self, pieces: list[Tensor]) -> None:
        scale = _loss_scale(self.opt)
        for g, flat in enumerate(pieces):
            self.opt.averaged_gradients[g] = [flat.mul_(scale) if scale != 1.0 else flat]


class BF16Partitions(GradPieces):
    """bf16 ZeRO-1 (`BF16_Optimizer`): fp32 gradients live in one flat buffer per group, all-reduced in full.

    Only this rank's slice (`fp32_groups_gradient_flat_partition[g]`, a view) is read, so the inner products
    cost 1/world of the work and use the same global reduction as the sharded stages; `step()` reads exactly
    that view, so u is written in place.
    """

    def __init__(self, optimizer: Any) -> None:
        self.opt = optimizer

    def clear(self) -> None:
        self.opt.clear_hp_grads()

    def current(self) -> list[Tensor]:
        return list(self.opt.fp32_groups_gradient_flat_partition)

    def take(self) -> list[Tensor]:
        return [t.clone() for t in self.current()]

    def install(self, pieces: list[Tensor]) -> None:
        """Nothing to do: the pieces are views of the buffers `step()` reads."""


class Stage3Partitions(GradPieces):
    """ZeRO-3 (`DeepSpeedZeroOptimizer_Stage3`): every parameter's gradient partition, end to end, in one buffer.

    After each backward the reduce-scatter writes (first micro-batch of a pass) or adds (later ones) each
    parameter's partition into `grad_partitions_flat_buffer`; `micro_step_id == 0` selects "write", and
    `zero_grad()` resets it. `averaged_gradients[g]` are views into that buffer and `step()` flattens them into
    the fp32 master partitions, so u is written into the buffer in place. The buffer is also zeroed on `clear()`
    so that a parameter that gets no gradient in a pass contributes zero, not the previous pass's value.
    """

    def __init__(self, optimizer: Any) -> None:
        self.opt = optimizer

    def _buffer(self) -> Tensor:
        return self.opt.grad_partitions_flat_buffer

    def clear(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self._buffer().zero_()

    def current(self) -> list[Tensor]:
        buf = self._buffer()
        scale = _loss_scale(self.opt)
        if scale != 1.0:
            buf.div_(scale)
        return [buf]

    def take(self) -> list[Tensor]:
        return [t.clone() for t in self.current()]

    def install(self, pieces: list[Tensor]) -> None:
        scale = _loss_scale(self.opt)
        if scale != 1.0:
            for t in pieces:
                t.mul_(scale)


def grad_pieces(engine: Any, params: list[nn.Parameter]) -> GradPieces:
    """The accessor for `engine.optimizer`; an optimizer this module does not know is refused, not guessed at."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    opt = engine.optimizer
    if isinstance(opt, DeepSpeedZeroOptimizer_Stage3):
        if getattr(opt, "offload_optimizer", False):
            raise NotImplementedError("ZeRO-3 with optimizer offload keeps gradients on the host; not supported")
        return Stage3Partitions(opt)
    if isinstance(opt, DeepSpeedZeroOptimizer):
        if getattr(opt, "cpu_offload", False):
            raise NotImplementedError("ZeRO-1/2 with optimizer offload keeps gradients on the host; not supported")
        return Stage12Partitions(opt)
    if isinstance(opt, BF16_Optimizer):
        return BF16Partitions(opt)
    if isinstance(opt, torch.optim.Optimizer):
        return ReplicatedGrads(params)
    raise NotImplementedError(f"DeepSpeed optimizer {type(opt).__name__} is not supported by the unlearning loop")


# -- checkpoint state: this rank's fp32 master partitions and the optimizer state over them ----------------------
#
# | optimizer (engine.optimizer)       | master partitions (fp32)             | refresh working params from masters  |
# |------------------------------------|--------------------------------------|--------------------------------------|
# | DeepSpeedZeroOptimizer (ZeRO-1/2)  | `single_partition_of_fp32_groups[g]` | `update_lp_params()`: copy into this |
# |                                    |                                      | rank's bit16 slice, all-gather flat  |
# | BF16_Optimizer (ZeRO-1, bf16)      | `fp32_groups_flat_partition[g]`      | `update_lp_params()` (same)          |
# | DeepSpeedZeroOptimizer_Stage3      | `fp32_partitioned_groups_flat[s]`    | `_reassign_or_swap_out_partitioned_  |
# |                                    |                                      | parameters(s)` (what step() does),   |
# |                                    |                                      | then `checkpoint_event_epilogue()`   |
#
# The wrapped torch optimizer (`optimizer.optimizer`) holds the master partitions as its parameters (ZeRO-1/2
# always; ZeRO-3 only inside `step()`, so they are put in for the state_dict round trip and taken out again).


class MasterState:
    """This rank's share of the trained state under ZeRO-1/2/3, in the optimizer's own partitioning."""

    def __init__(self, optimizer: Any) -> None:
        self.opt = optimizer

    def masters(self) -> list[Tensor]:
        raise NotImplementedError

    def optimizer_state(self) -> dict[str, Any]:
        """The wrapped torch optimizer's state_dict over the master partitions."""
        return self.opt.optimizer.state_dict()

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        self.opt.optimizer.load_state_dict(state)

    def refresh_model(self) -> None:
        """Make the model's working parameters (all ranks' copies/partitions) equal the master partitions."""
        raise NotImplementedError


class Stage12Masters(MasterState):
    def masters(self) -> list[Tensor]:
        return list(self.opt.single_partition_of_fp32_groups)

    @torch.no_grad()
    def refresh_model(self) -> None:
        self.opt.update_lp_params()  # collective: all-gathers the bit16 partitions into the model's flat buffers


class BF16Masters(MasterState):
    def masters(self) -> list[Tensor]:
        return list(self.opt.fp32_groups_flat_partition)

    @torch.no_grad()
    def refresh_model(self) -> None:
        self.opt.update_lp_params()


class Stage3Masters(MasterState):
    def masters(self) -> list[Tensor]:
        return list(self.opt.fp32_partitioned_groups_flat)

    def optimizer_state(self) -> dict[str, Any]:
        self.opt._set_fp32_optimizer_param_groups()
        try:
            return self.opt.optimizer.state_dict()
        finally:
            self.opt._clear_fp32_optimizer_param_groups()

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        self.opt._set_fp32_optimizer_param_groups()
        try:
            self.opt.optimizer.load_state_dict(state)
        finally:
            self.opt._clear_fp32_optimizer_param_groups()

    @torch.no_grad()
    def refresh_model(self) -> None:
        for sub_group in range(len(self.opt.fp16_groups)):
            # copies the fp32 master into the lp flat buffer and re-points every param's ds_tensor at it
            self.opt._reassign_or_swap_out_partitioned_parameters(sub_group)
        # re-gathers the parameters ZeRO-3 keeps whole (below stage3_param_persistence_threshold)
        self.opt.checkpoint_event_epilogue()


def cut_like(pieces: list[Tensor], masters: list[Tensor]) -> list[Tensor]:
    """Gradient pieces cut into views that line up entry for entry with the master partitions.

    ZeRO-1/2 (and bf16 ZeRO-1) already agree: one flat partition per parameter group on both sides. ZeRO-3
    keeps the whole gradient partition in one buffer, parameters in sub-group order with each parameter's
    `partition_numel()` entries, which is exactly how `fp32_partitioned_groups_flat[s]` is laid out, sub-group
    after sub-group: cutting the buffer at the sub-groups' sizes aligns them. Anything else is refused rather
    than guessed at (a DeepSpeed upgrade that moves these buffers must fail here, not perturb the wrong entries).
    """
    sizes = [m.numel() for m in masters]
    if [t.numel() for t in pieces] == sizes:
        return [t.view(-1) for t in pieces]
    if len(pieces) == 1 and pieces[0].numel() == sum(sizes):
        return list(pieces[0].view(-1).split(sizes))
    raise RuntimeError(f"ZeRO gradient pieces of sizes {[t.numel() for t in pieces]} do not line up with the "
                       f"master partitions of sizes {sizes}")


# What a dynamic fp16 loss scaler learns while training; the rest of its attributes (scale factor, window,
# minimum, delayed shift) come from the config. cur_iter and last_overflow_iter decide when the scale next grows,
# cur_hysteresis how many more overflows it tolerates before it shrinks.
_SCALER_STATE = ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis")


def loss_scaler_state(optimizer: Any) -> dict[str, float | int]:
    """The evolving state of a DeepSpeed ZeRO optimizer's fp16 loss scaler (identical on every rank: overflow
    is all-reduced before the scaler sees it)."""
    scaler = getattr(optimizer, "loss_scaler", None)
    if scaler is None:
        raise NotImplementedError(f"{type(optimizer).__name__} has no loss_scaler to checkpoint")
    return {k: getattr(scaler, k) for k in _SCALER_STATE if hasattr(scaler, k)}


def restore_loss_scaler(optimizer: Any, state: dict[str, float | int]) -> None:
    scaler = getattr(optimizer, "loss_scaler", None)
    if scaler is None:
        raise NotImplementedError(f"{type(optimizer).__name__} has no loss_scaler to restore")
    for key, value in state.items():
        if key not in _SCALER_STATE:
            raise ValueError(f"unknown loss-scaler field {key!r}")
        setattr(scaler, key, value)


def master_state(engine: Any) -> MasterState:
    """The checkpoint accessor for `engine.optimizer` (ZeRO-1/2/3 without offload); others are refused."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    opt = engine.optimizer
    if isinstance(opt, DeepSpeedZeroOptimizer_Stage3) and not getattr(opt, "offload_optimizer", False) \
            and not getattr(opt, "swap_optimizer", False):
        return Stage3Masters(opt)
    if isinstance(opt, DeepSpeedZeroOptimizer) and not getattr(opt, "cpu_offload", False):
        return Stage12Masters(opt)
    if isinstance(opt, BF16_Optimizer):
        return BF16Masters(opt)
    raise NotImplementedError(f"checkpoints are not implemented for DeepSpeed optimizer {type(opt).__name__}")
