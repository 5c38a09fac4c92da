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
    # A frozen copy of the adapted model: lora_model's random B make it differ from its base, so here the
    # adapter-disabled reference would not be the model before unlearning (it refuses a non-zero lora_B).
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


# -- the reference under LoRA: the base with adapters disabled, no copy -----------------------------------------
def fresh_lora_model() -> torch.nn.Module:
    """As the pipeline has it before unlearning: peft's own initialisation (B = 0), base frozen."""
    return apply_lora(tiny_model(), LORA)


def perturb_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    """What a few unlearning steps do: the adapters move and the model differs from its base."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)


def run_unlearner(adapters: bool, forget: str, retain: str, steps: int = 3) -> tuple[list[dict], torch.Tensor]:
    from unlearn.train.reference import AdapterDisabledReference

    model = fresh_lora_model()
    ref = AdapterDisabledReference(model) if adapters else copy.deepcopy(model).requires_grad_(False).eval()
    u = Unlearner(
        model=model, forget_loss=build_objective(FORGET_LOSSES, {"name": forget}),
        retain_loss=build_objective(RETAIN_LOSSES, {"name": retain}),
        rule=build_direction({"name": "blur", "gamma": GAMMA}), backend=Backend(),
        make_optimizer=lambda params: torch.optim.SGD(params, lr=LR, momentum=0.9), make_scheduler=None,
        collate=collate, cfg=LoopConfig(batch_size=4, micro_batch_size=2, epochs=1, max_steps=steps),
        ref_model=ref,
    )
    assert not u.precomputes_reference
    rows = u.run(examples(12, 0), examples(12, 1))
    return rows, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize(("forget", "retain"), [("npo", "kl"), ("npo", "nll"), ("ga", "kl")])
def test_adapter_disabled_reference_runs_exactly_like_the_copy(forget: str, retain: str) -> None:
    """Three shuffled, micro-batched BLUR steps (the adapters move after the first): every loss, gradient
    statistic and weight equals the run with a deep-copied reference, to float64 rounding."""
    rows_copy, w_copy = run_unlearner(False, forget, retain)
    rows_ad, w_ad = run_unlearner(True, forget, retain)
    assert not torch.equal(w_copy, torch.cat([p.detach().reshape(-1) for p in fresh_lora_model().parameters()]))
    for a, b in zip(rows_copy, rows_ad, strict=True):
        for k in ("loss_f", "loss_r", "norm_f", "norm_r", "cos_fr", "A_f", "norm_u"):
            assert b[k] == pytest.approx(a[k], rel=1e-12, abs=1e-15), k
    torch.testing.assert_close(w_ad, w_copy, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("registry", "cfg"), [
    (RETAIN_LOSSES, {"name": "kl"}),
    (FORGET_LOSSES, {"name": "npo", "beta": 0.1}),
    (RETAIN_LOSSES, {"name": "rmu", "layer": 1}),
])
def test_adapter_disabled_loss_and_gradient_equal_the_copy_after_the_adapters_moved(registry, cfg) -> None:
    from unlearn.train.reference import AdapterDisabledReference

    model = fresh_lora_model()
    ref_copy = copy.deepcopy(model).requires_grad_(False).eval()  # taken before unlearning, like the pipeline's
    ref = AdapterDisabledReference(model)
    perturb_adapters(model)
    objective = build_objective(registry, cfg)
    objective.setup(model)
    batch = collate(examples(6, 3))
    params = [p for p in model.parameters() if p.requires_grad]
    loss_copy = objective(model, batch, ref_copy)
    loss_ad = objective(model, batch, ref)
    assert float(loss_copy.detach()) != 0.0
    torch.testing.assert_close(loss_ad, loss_copy, rtol=1e-13, atol=1e-15)
    for x, y in zip(torch.autograd.grad(loss_copy, params), torch.autograd.grad(loss_ad, params), strict=True):
        torch.testing.assert_close(y, x, rtol=1e-12, atol=1e-15)


def test_adapter_disabled_forward_keeps_no_graph_and_restores_the_model() -> None:
    from unlearn.train.reference import AdapterDisabledReference

    model = fresh_lora_model()
    ref = AdapterDisabledReference(model)
    perturb_adapters(model)
    model.train()
    batch = collate(examples(2, 4))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    base = ref(**inputs).logits
    assert not base.requires_grad and base.grad_fn is None  # no_grad: nothing flows back into the adapters
    assert model.training  # eval only during the reference forward
    adapted = model(**inputs).logits
    assert adapted.requires_grad  # the adapters are enabled again afterwards
    assert not torch.allclose(adapted, base)
    with model.disable_adapter():
        torch.testing.assert_close(model(**inputs).logits.detach(), base, rtol=0, atol=0)


def test_adapter_disabled_reference_holds_no_second_copy() -> None:
    """Every tensor the reference reaches is a tensor of the trained model; a deep copy's are all new."""
    from unlearn.train.reference import AdapterDisabledReference

    model = fresh_lora_model()
    ptrs = {p.data_ptr() for p in model.parameters()} | {b.data_ptr() for b in model.buffers()}
    ref = AdapterDisabledReference(model)
    assert not isinstance(ref, torch.nn.Module)  # registers nothing of its own
    ref_ptrs = {p.data_ptr() for p in ref.module.parameters()} | {b.data_ptr() for b in ref.module.buffers()}
    assert ref.module is model and ref_ptrs == ptrs
    copied = copy.deepcopy(model)
    assert not {p.data_ptr() for p in copied.parameters()} & ptrs


def test_adapter_disabled_reference_refuses_what_would_not_be_exact() -> None:
    from unlearn.train.reference import AdapterDisabledReference

    with pytest.raises(ValueError, match="needs a peft model"):
        AdapterDisabledReference(tiny_model())
    moved = fresh_lora_model()
    perturb_adapters(moved)
    with pytest.raises(ValueError, match=r"lora_B.*not zero"):
        AdapterDisabledReference(moved)
    base_trains = fresh_lora_model()
    next(p for n, p in base_trains.named_parameters() if "embed_tokens" in n).requires_grad_(True)
    with pytest.raises(ValueError, match=r"embed_tokens.*train"):
        AdapterDisabledReference(base_trains)
    other = fresh_lora_model()
    u_kwargs = dict(forget_loss=build_objective(FORGET_LOSSES, {"name": "ga"}),
                    retain_loss=build_objective(RETAIN_LOSSES, {"name": "kl"}),
                    rule=build_direction({"name": "blur"}), backend=Backend(),
                    make_optimizer=lambda params: torch.optim.SGD(params, lr=LR), make_scheduler=None,
                    collate=collate, cfg=LoopConfig(batch_size=4, epochs=1))
    with pytest.raises(ValueError, match="must wrap the model being unlearned"):
        Unlearner(model=fresh_lora_model(), ref_model=AdapterDisabledReference(other), **u_kwargs)
