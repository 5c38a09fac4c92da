"""The reference model's sequence log-probabilities, computed once before unlearning (docs/methods.md#npo-reference).

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

from collections.abc import Callable, Mapping, Sequence
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
