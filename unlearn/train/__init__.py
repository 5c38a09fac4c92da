"""The unlearning loop and the pieces it is built from (backends, optimizers, diagnostics)."""

# Registers the multi-process backends (ddp, fsdp2, deepspeed) next to `single`, so that any import of the
# training package makes every `trainer.backend` name resolvable. DeepSpeed itself is imported lazily.
from unlearn.train import backends as _backends  # noqa: F401
