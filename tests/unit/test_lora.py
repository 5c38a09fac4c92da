"""LoRA: only adapters train, a BLUR step through the real loop touches only them, and BLUR's invariant
`<g_f, u> = gamma * ||g_f||^2` holds in adapter space."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from unlearn.directions import build_direction
from unlearn.errors import ConfigError
from unlearn.models.lora import apply_lora, resolve_lora
from unlearn.objectives import FORGET_LOSSES, RETAIN_LOSSES, build_objective
from unlearn.train.backend import Backend
from unlearn.train.loop import LoopConfig, Unlearner

pytest.importorskip("peft")

LR = 0.1
GAMMA = 0.7
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"]}


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).double()  # float64: the invariant is checked to ~1e-9


def examples(n: int, seed: int) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 32, (8,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:], "attention_mask": [1] * 8})
    return out


def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([ex[k] for ex in batch]) for k in batch[0]}


def lora_model() -> torch.nn.Module:
    model = apply_lora(tiny_model(), LORA)
    # peft initialises B = 0, which would make every A-gradient zero on the first step; random B exercises
    # the whole adapter (and makes the adapter output non-zero, as it is after a few steps of training).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    return model


def make_unlearner(model: torch.nn.Module) -> Unlearner:
    # The explicit frozen reference copy (see unlearn/models/lora.py for why not `disable_adapter()`).
    ref = copy.deepcopy(model).requires_grad_(False).eval()
    return Unlearner(
        model=model,
        forget_loss=build_objective(FORGET_LOSSES, {"name": "npo", "beta": 0.1}),
        retain_loss=build_objective(RETAIN_LOSSES, {"name": "nll"}),
        rule=build_direction({"name": "blur", "gamma": GAMMA}),
        backend=Backend(),
        make_optimizer=lambda params: torch.optim.SGD(params, lr=LR),
        make_scheduler=None,
        collate=collate,
        cfg=LoopConfig(batch_size=8, epochs=1),
        ref_model=ref,
    )


def test_only_adapter_parameters_are_trainable() -> None:
    model = lora_model()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert frozen and not any("lora_" in n for n in frozen)
    # 2 layers x 4 target modules x (A, B)
    assert len(trainable) == 2 * 4 * 2


def test_blur_step_changes_only_adapters_and_keeps_the_invariant() -> None:
    model = lora_model()
    u = make_unlearner(model)
    f, r = examples(8, 0), examples(8, 1)
    before = {n: p.detach().clone() for n, p in u.model.named_parameters()}

    # g_f by hand, over the trainable (adapter) parameters only, at the current parameters.
    names = [n for n, p in u.model.named_parameters() if p.requires_grad]
    params = [p for p in u.model.parameters() if p.requires_grad]
    loss_f = u.forget_loss(u.model, collate(f), u.ref_model)
    g_f = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_f, params)])

    diag = u.step(f, r)

    after = dict(u.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed, "the step changed nothing"
    assert changed <= set(names), f"non-adapter parameters changed: {sorted(changed - set(names))}"
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)

    # SGD: theta' = theta - lr * u, so u = (theta - theta') / lr over the adapter parameters.
    update = torch.cat([(before[n] - after[n].detach()).reshape(-1) for n in names]) / LR
    assert float(g_f @ update) == pytest.approx(GAMMA * float(g_f @ g_f), rel=1e-8)
    assert diag["A_f"] == pytest.approx(GAMMA, rel=1e-9)
    assert diag["norm_f"] == pytest.approx(float(g_f.norm()), rel=1e-9)


def test_off_returns_the_model_unchanged() -> None:
    model = tiny_model()
    assert apply_lora(model, None) is model
    assert apply_lora(model, {"enabled": False, "r": 4}) is model
    assert all(p.requires_grad for p in model.parameters())


def test_omegaconf_section_is_accepted() -> None:
    cfg = OmegaConf.create({"r": 2, "target_modules": ["q_proj"]})
    model = apply_lora(tiny_model(), cfg)
    assert sum(p.requires_grad for p in model.parameters()) == 2 * 2


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"rank": 4}, "model.lora.rank"),
        ({"r": 0}, "model.lora.r"),
        ({"r": 2.5}, "model.lora.r"),
        ({"alpha": -1}, "model.lora.alpha"),
        ({"dropout": 1.0}, "model.lora.dropout"),
        ({"enabled": "yes"}, "model.lora.enabled"),
        ({"target_modules": []}, "model.lora.target_modules"),
        ({"target_modules": ["no_such_proj"]}, "model.lora.target_modules"),
    ],
)
def test_bad_config_names_the_key(cfg: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        apply_lora(tiny_model(), cfg)


def test_resolve_fills_defaults() -> None:
    out = resolve_lora({"r": 2})
    assert out is not None and out["r"] == 2 and out["alpha"] == 16 and "q_proj" in out["target_modules"]
    assert resolve_lora({"enabled": False}) is None
