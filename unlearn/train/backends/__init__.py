"""Multi-process backends, registered in `unlearn.train.backend.BACKENDS` under `trainer.backend`:

- `ddp`: torch DistributedDataParallel (replicated gradients; no reduction needed for inner products);
- `fsdp2`: torch `fully_shard` (sharded DTensor gradients; local dots + one all-reduce);
- `deepspeed`: DeepSpeed ZeRO stage 0-3 (each rank's flat gradient partition; local dots + one all-reduce).

Importing this package registers them; DeepSpeed itself is imported only when its backend is built.
"""

from unlearn.train.backends import ddp, fsdp2, zero

__all__ = ["ddp", "fsdp2", "zero"]
