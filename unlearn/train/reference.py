"""The reference without a second model: precomputed log-probs, or the LoRA base (docs/methods.md#npo-reference).

Two exact ways of having the model *before* unlearning without holding a copy of it:

- `PrecomputedReference`, for objectives that need only the reference's sequence log-probs (NPO);
- `AdapterDisabledReference`, under LoRA, for objectives that need its forward on ever-new batches (KL, RMU's
  retain loss): the trained model itself with its adapters switched off.

The reference model's sequence log-probabilities, computed once before unlearning:

NPO needs `logp_ref(y|x)` of every forget example under the model *before* unlearning. The forget set is fixed,
so those numbers can be computed once, before the first step, and looked up afterwards (as TRL's
`precompute_ref_log_probs` does for DPO): no second model in memory and no reference forward per step. Before the
first step the model being trained *is* the reference, so not even a copy is needed to compute them.

Lookups are keyed by an example's content (its unpadded input ids and labels), not by its position: the loop
shuffles, cuts batches into micro-batches and shares them among ranks, and a content key finds the right value
under all of that (and for a batch assembled by hand). Values are computed one micro-batch at a time in example
order, under the backend's autocast, like the in-memory reference's forward; they differ from it only by the
float rounding of a differently padded batch (tests/unit/test_reference.py bounds it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

Example = dict[str, list[int]]


def row_keys(batch: Mapping[str, Tensor]) -> list[bytes]:
    """One key per row: the unpadded input ids and labels (padding, left or right, does not change it)."""
    ids, labels, mask = (batch[k].detach().cpu() for k in ("input_ids", "labels", "attention_mask"))
    keys = []
    for i in range(ids.shape[0]):
        keep = mask[i].bool()
        row = torch.cat([ids[i][keep], torch.tensor([-1]), labels[i][keep]]).to(torch.int64)
        keys.append(row.numpy().tobytes())
    return keys


class PrecomputedReference:
    """`sequence_logp(batch)`: the reference's summed answer log-probs for each row, looked up by content."""

    def __init__(self, keys: Sequence[bytes], values: Tensor) -> None:
        if len(keys) != values.numel():
            raise ValueError(f"{len(keys)} keys for {values.numel()} values")
        self.values = values.detach().cpu()
        self.index: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            self.index.setdefault(k, i)  # a duplicate example: its first value (they agree up to rounding)

    @classmethod
    @torch.no_grad()
    def compute(cls, model: nn.Module, examples: Sequence[Example], collate: Callable[[Sequence[Example]],
                dict[str, Tensor]], device: torch.device, autocast: Callable[[], Any], batch_size: int
                ) -> PrecomputedReference:
        """Forward passes over `examples` in order, `batch_size` at a time; every rank computes all of them, so
        sharded backends' forwards stay paired across ranks."""
        from unlearn.objectives.base import sequence_logp

        was_training = model.training
        model.eval()
        keys: list[bytes] = []
        values: list[Tensor] = []
        try:
            for start in range(0, len(examples), batch_size):
                batch = {k: v.to(device) for k, v in collate(examples[start : start + batch_size]).items()}
                with autocast():
                    values.append(sequence_logp(model, batch)[0].detach())
                keys += row_keys(batch)
        finally:
            model.train(was_training)
        return cls(keys, torch.cat(values).cpu())

    def sequence_logp(self, batch: Mapping[str, Tensor]) -> Tensor:
        try:
            idx = [self.index[k] for k in row_keys(batch)]
        except KeyError:
            raise RuntimeError("precomputed reference: a batch holds an example that was not precomputed (the "
                               "reference log-probs cover the forget set given to Unlearner.run)") from None
        return self.values[idx].to(batch["input_ids"].device)

    # -- checkpoints: values in example order; keys are rebuilt from the same examples on resume -----------
    def state(self) -> dict[str, Any]:
        order = sorted(self.index.items(), key=lambda kv: kv[1])
        return {"dtype": str(self.values.dtype).removeprefix("torch."),
                "values": [float(self.values[i]) for _, i in order]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], examples: Sequence[Example],
                   collate: Callable[[Sequence[Example]], dict[str, Tensor]]) -> PrecomputedReference:
        keys: list[bytes] = []
        seen: set[bytes] = set()
        for ex in examples:
            (k,) = row_keys(collate([ex]))
            if k not in seen:
                seen.add(k)
                keys.append(k)
        values = torch.tensor(state["values"], dtype=getattr(torch, state["dtype"]))
        if len(keys) != values.numel():
            raise ValueError(f"resume: the checkpoint's precomputed reference has {values.numel()} values for "
                             f"{len(keys)} distinct examples; was it written for another forget set?")
        return cls(keys, values)


ADAPTER_BACKENDS = ("single", "ddp")
"""Backends on which the adapter-disabled reference is tested: the forward runs on the module inside the
data-parallel wrapper, under no_grad, so DDP's hooks never see it. FSDP2 and ZeRO-3 gather parameters in module
hooks whose interplay with a no-grad forward of the root between training forwards is not covered by a test here,
so `method.reference=auto` keeps the copy there."""


def is_adapter_parameter(name: str) -> bool:
    """True for a LoRA adapter parameter of a peft model (`...lora_A.default.weight`, `lora_embedding_B`, ...)."""
    return ".lora_" in name or name.startswith("lora_")


class AdapterDisabledReference:
    """The reference under LoRA: the trained peft model with its adapters disabled (peft's `disable_adapter()`).

    Exact because LoRA freezes the base weights and peft initialises every B matrix to zero: the model the run
    starts from *is* the base, and the base never changes, so the base forward equals a copy's forward taken
    before the first step, at every step. The constructor checks both (every trainable parameter is an adapter
    parameter, and every `lora_B` is zero: adapters that already add something, or an initialisation that
    rewrites the base like PiSSA's, would make the base differ from the model unlearning starts from). The forward
    runs under `torch.no_grad()` (no graph, no gradient into the adapters) and in eval mode, like the frozen copy's.

    Called like a model (`ref(input_ids=..., attention_mask=...)`), so objectives need no knowledge of peft; not
    an `nn.Module`, so it registers no parameters of its own and `.parameters()` of nothing counts twice.
    `module` is the peft model (where `decoder_layers` finds the layers RMU hooks).
    """

    def __init__(self, peft_model: nn.Module) -> None:
        if not callable(getattr(peft_model, "disable_adapter", None)):
            raise ValueError(f"the adapter-disabled reference needs a peft model (model.lora), got "
                             f"{type(peft_model).__name__}")
        base = [n for n, p in peft_model.named_parameters() if p.requires_grad and not is_adapter_parameter(n)]
        if base:
            raise ValueError(f"the adapter-disabled reference needs frozen base weights, but {base[0]} (and "
                             f"{len(base) - 1} more) train; use method.reference=copy")
        nonzero = [n for n, p in peft_model.named_parameters() if "lora_B" in n and bool(p.detach().any())]
        if nonzero:
            raise ValueError(f"the adapter-disabled reference is the model before unlearning only while the "
                             f"adapters add nothing, but {nonzero[0]} is not zero; use method.reference=copy")
        self.module = peft_model

    @contextlib.contextmanager
    def _base(self) -> Iterator[None]:
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad(), self.module.disable_adapter():  # type: ignore[operator]
                yield
        finally:
            self.module.train(was_training)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._base():
            return self.module(*args, **kwargs)
