"""torch DistributedDataParallel: every rank holds the whole model and, after the all-reduce, the whole gradient.

Gradients are averaged over ranks by DDP's own bucketed all-reduce on the last micro-batch of each pass
(earlier micro-batches run under `no_sync` and only accumulate locally). Once averaged they are identical on
every rank, so the inner products need no further reduction: each rank computes the same Gram matrix from the
same numbers, and GradSpace runs without an all-reduce.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from unlearn.train.backend import BACKENDS, OptimizerFactory
from unlearn.train.backends.dist import DistributedBackend


@BACKENDS.register("ddp")
class DDPBackend(DistributedBackend):
    """Data parallelism with replicated parameters, gradients and optimizer state.

    `mixed_precision=bf16` works as in one process: float32 master weights (a bf16-loaded model is upcast) and
    forwards under `torch.autocast(bf16)`; gradients, and so DDP's all-reduce, stay float32. The reference model
    is a plain replicated copy in its loaded dtype.
    """

    replicated_state = True
    supported_precisions = ("bf16",)

    def __init__(self, device: str = "auto", gradient_checkpointing: bool = False,
                 bucket_cap_mb: float = 25.0, mixed_precision: str | None = None,
                 process_group_timeout: float = 1800.0) -> None:
        super().__init__(device=device, mixed_precision=mixed_precision,
                         gradient_checkpointing=gradient_checkpointing, process_group_timeout=process_group_timeout)
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.ddp: DistributedDataParallel | None = None

    def setup(self, model: nn.Module, make_optimizer: OptimizerFactory) -> nn.Module:
        model = self._prepare(self._master_weights(model))
        self._params = [p for p in model.parameters() if p.requires_grad]
        if not self._params:
            raise ValueError("the model has no trainable parameters")
        on_cuda = self.device.type == "cuda"
        # gradient_as_bucket_view stays False: the loop swaps in spare gradient buffers between the forget and
        # the retain pass (take_grads), which is only valid when DDP copies into whatever `.grad` holds.
        # forward_sync_buffers=False: language models have no running statistics, only constant buffers (rotary
        # frequencies), which DDP syncs once at construction; re-broadcasting them every forward is wasted.
        self.ddp = DistributedDataParallel(
            model,
            device_ids=[self.device.index] if on_cuda else None,
            forward_sync_buffers=False,
            bucket_cap_mb=self.bucket_cap_mb,
            gradient_as_bucket_view=False,
        )
        self.model = self.ddp
        self.optimizer = make_optimizer(self._params)
        return self.ddp

    def export_model(self) -> nn.Module | None:
        """Every rank holds the full model; rank 0 hands out the module inside the DDP wrapper."""
        return self.ddp.module if self.rank == 0 and self.ddp is not None else None

    @contextlib.contextmanager
    def accumulating(self, last: bool) -> Iterator[None]:
        """Only the last micro-batch of a pass all-reduces; the others accumulate locally under no_sync."""
        if self.ddp is None:
            raise RuntimeError("DDPBackend.setup() must run before accumulating()")
        if last:
            yield
        else:
            with self.ddp.no_sync():
                yield
