"""RMU (representation misdirection, the WMDP paper): forget and retain losses on one layer's hidden states.

docs/methods.md#rmu-forget and #rmu-reference. Both losses read `h_l`, the output of decoder layer `l` (0-based; the
residual stream after block `l`), captured with a forward hook:

- `rmu` (forget): mean over examples of `(1/(n*d)) sum_t ||h_l(theta; x_f)_t - c*v||^2`, v a fixed random unit
  vector (uniform on [0,1)^d, normalised, as WMDP draws it), c the steering coefficient;
- `rmu` (retain): the same mean of `||h_l(theta; x_r)_t - h_l(theta_frozen; x_r)_t||^2`, the frozen model being the
  reference model the pipeline already builds for NPO and KL.

`n` counts the example's attended tokens and `d` the hidden size, so each loss is a mean over examples of a
per-example quantity (exact under gradient accumulation) and equals WMDP's `F.mse_loss` (mean over batch, positions
and hidden dimensions) whenever a batch has no padding. WMDP includes padding positions; here they are masked out,
because a padded position's share of the loss would depend on which examples share its micro-batch.

`truncate` (default on) runs only layers 0..l: nothing after layer l enters either loss, so the rest of the forward
is wasted work (WMDP's code runs every layer). Parameters after layer l then get no gradient; train only layers <= l
(`model.trainable`, as the reference trains `mlp.down_proj` of layers l-2..l).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from unlearn.errors import ConfigError
from unlearn.objectives.base import FORGET_LOSSES, RETAIN_LOSSES, Objective, upcast


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / DeepSpeed engines (both keep it as `.module`)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def decoder_layers(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(owner, attribute, list) of the model's decoder layers: the first `nn.ModuleList` attribute called `layers`.

    Covers Llama, Mistral (Zephyr), Qwen and the like, also under peft (`base_model.model.model.layers`) and under the
    data-parallel wrappers.
    """
    for module in _unwrap(model).modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return module, "layers", layers
    raise ConfigError(f"method.forget.layer: {type(_unwrap(model)).__name__} has no decoder layer list (`layers`)")


@contextlib.contextmanager
def _truncated(owner: nn.Module, name: str, layers: nn.ModuleList, keep: int) -> Iterator[None]:
    """Temporarily run only the first `keep` layers (restored even if the forward raises)."""
    if keep >= len(layers):
        yield
        return
    setattr(owner, name, nn.ModuleList(list(layers)[:keep]))
    try:
        yield
    finally:
        setattr(owner, name, layers)


def layer_activations(model: nn.Module, batch: Mapping[str, Tensor], layer: int, truncate: bool = True) -> Tensor:
    """The output of decoder layer `layer` on `batch`, shape [batch, positions, hidden] (with the graph)."""
    owner, name, layers = decoder_layers(model)
    if not -len(layers) <= layer < len(layers):
        raise ConfigError(f"method.forget.layer: {layer} is out of range; the model has {len(layers)} layers")
    layer = layer % len(layers)
    captured: dict[str, Tensor] = {}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        captured["h"] = output[0] if isinstance(output, tuple) else output

    handle = layers[layer].register_forward_hook(hook)
    try:
        with _truncated(owner, name, layers, layer + 1) if truncate else contextlib.nullcontext():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    finally:
        handle.remove()
    if "h" not in captured:
        raise RuntimeError(f"layer {layer} did not run in the forward pass")
    return captured["h"]


def per_example_mse(h: Tensor, target: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean over examples of `(1/(n*d)) sum_t ||h_t - target_t||^2` over attended positions t; float32 at least."""
    diff = upcast(h) - upcast(target)
    mask = attention_mask.to(diff.dtype)
    per_token = diff.pow(2).mean(dim=-1)  # (1/d) ||.||^2
    per_example = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return per_example.mean()


def control_vector(hidden_size: int, seed: int) -> Tensor:
    """v = w/||w||, w ~ U[0,1)^d from a CPU generator seeded with `seed` (float32; the same on every machine)."""
    g = torch.Generator().manual_seed(int(seed))
    w = torch.rand(hidden_size, generator=g, dtype=torch.float32)
    return w / w.norm()


class _LayerObjective(Objective):
    def __init__(self, layer: int, truncate: bool, key: str) -> None:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ConfigError(f"{key}.layer: expected an integer layer index, got {layer!r}")
        if not isinstance(truncate, bool):
            raise ConfigError(f"{key}.truncate: expected true/false, got {truncate!r}")
        self.layer, self.truncate, self.key = layer, truncate, key

    def setup(self, model: nn.Module, seed: int = 0) -> None:
        """Check the layer exists before training starts (the error names the key)."""
        n = len(decoder_layers(model)[2])
        if not -n <= self.layer < n:
            raise ConfigError(f"{self.key}.layer: {self.layer} is out of range; the model has {n} decoder layers")


@FORGET_LOSSES.register("rmu")
class RMUForget(_LayerObjective):
    """Push layer-l activations of forget text towards `c * v` (docs/methods.md#rmu-forget).

    `v` is drawn at `setup` from `seed` (the run's seed when null) and saved with every checkpoint
    (`state_dict`), so a resumed run steers towards the same vector even if the seed rule changes.
    """

    def __init__(self, layer: int = 7, steering_coeff: float = 6.5, seed: int | None = None,
                 truncate: bool = True) -> None:
        super().__init__(layer, truncate, "method.forget")
        if isinstance(steering_coeff, bool) or not isinstance(steering_coeff, int | float) or steering_coeff <= 0:
            raise ConfigError(f"method.forget.steering_coeff: must be a number > 0, got {steering_coeff!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"method.forget.seed: expected an integer or null, got {seed!r}")
        self.steering_coeff = float(steering_coeff)
        self.seed = seed
        self.v: Tensor | None = None

    def setup(self, model: nn.Module, seed: int = 0) -> None:
        super().setup(model, seed)
        hidden = int(_unwrap(model).config.hidden_size)
        if self.v is None or self.v.numel() != hidden:
            self.v = control_vector(hidden, self.seed if self.seed is not None else seed)

    def state_dict(self) -> dict[str, Any]:
        return {"control_vector": None if self.v is None else self.v.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("control_vector") is not None:
            self.v = torch.tensor(state["control_vector"], dtype=torch.float32)

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], ref_model: nn.Module | None) -> Tensor:
        if self.v is None:
            self.setup(model)
        h = layer_activations(model, batch, self.layer, self.truncate)
        assert self.v is not None
        target = (self.v.to(device=h.device, dtype=upcast(h).dtype) * self.steering_coeff).expand_as(h)
        return per_example_mse(h, target, batch["attention_mask"])


@RETAIN_LOSSES.register("rmu")
class RMURetain(_LayerObjective):
    """Keep layer-l activations of retain text where the frozen model has them (docs/methods.md#rmu-forget)."""

    needs_ref = True

    def __init__(self, layer: int = 7, truncate: bool = True) -> None:
        super().__init__(layer, truncate, "method.retain")

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], ref_model: nn.Module | None) -> Tensor:
        ref = self._require_ref(ref_model)
        with torch.no_grad():  # frozen activations first: no graph, freed before the trained model's forward
            frozen = layer_activations(ref, batch, self.layer, self.truncate).detach()
        h = layer_activations(model, batch, self.layer, self.truncate)
        return per_example_mse(h, frozen, batch["attention_mask"])


__all__ = ["RMUForget", "RMURetain", "control_vector", "decoder_layers", "layer_activations", "per_example_mse"]
