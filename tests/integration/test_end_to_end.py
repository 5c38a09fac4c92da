"""Tiny end-to-end runs: every method config unlearns a micro world, and the forget metrics move the right way."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.integration.helpers import micro_cfg
from unlearn.evals.base import read_items
from unlearn.pipeline import run_experiment
from unlearn.train.diagnostics import COLUMNS

METHODS = ["ga", "graddiff", "npo", "simnpo", "ngdiff", "blur_npo", "blur_simnpo", "blur_ga", "ofmu", "ngdiff_adaptive"]
#: OFMU's plain-SGD ascent inner step forgets slowly, then all at once, and where the turn comes depends on the
#: micro model, i.e. on the CPU that built it (docs/methods.md#ofmu): at its 10 configured steps one 2-vCPU AVX2
#: machine's micro world kept 0.77 / 0.19 / 0.67 of the forget probability over seeds 0-2, where the machine that
#: chose the recipe measured 0.31. With 20 steps it kept 0.00 / 0.00 / 0.43 there. This test asks that the config
#: forgets, so OFMU gets steps enough to be past its turn on both machines measured (the worst seed there keeps
#: 0.43, against the 0.7 asked); its recipe is unchanged.
STEPS = {"ofmu": ["benchmark.train.epochs=10"]}


@pytest.fixture(scope="session")
def e2e_cache(micro_cache_dir: Path) -> Path:
    """The session's micro cache: world and models are built once and shared with the unit tests."""
    return micro_cache_dir


@pytest.mark.parametrize("method", METHODS)
def test_every_method_forgets(method: str, e2e_cache: Path, tmp_path: Path) -> None:
    cfg = micro_cfg(e2e_cache, f"method={method}", *STEPS.get(method, []))
    run_dir = tmp_path / "run"
    summary = run_experiment(cfg, run_dir, console_print=False)
    refs = json.loads((run_dir / "references.json").read_text())
    original = refs["Original"]
    # The forget answers became less likely and are reproduced less often than by the target model.
    assert summary["forget_prob"] < 0.7 * original["forget_prob"], (summary, original)
    assert summary["forget_rouge"] < original["forget_rouge"]
    # Run directory contract.
    for name in ("config.yaml", "summary.json", "diagnostics.csv", "items/tofu.jsonl", "references.json", "table.csv"):
        assert (run_dir / name).exists(), name
    diag = pd.read_csv(run_dir / "diagnostics.csv")
    assert list(diag.columns[:9]) == COLUMNS[:9]
    assert len(diag) == summary["steps"] and diag["step"].tolist() == list(range(1, len(diag) + 1))
    items = read_items(run_dir / "items" / "tofu.jsonl")
    assert {"forget", "retain", "real_authors", "world_facts"} <= set(items["split"])
    for key in ("forget_quality", "forget_truth_ratio", "model_utility"):
        assert 0.0 <= summary[key] <= 1.0


def test_blur_alignment_with_forget_gradient_is_gamma(e2e_cache: Path, tmp_path: Path) -> None:
    cfg = micro_cfg(e2e_cache, "method=blur_npo", "method.direction.gamma=0.5", "trainer.max_steps=4",
                    "trainer.batch_size=4", "trainer.micro_batch_size=2")
    run_experiment(cfg, tmp_path / "run", console_print=False)
    diag = pd.read_csv(tmp_path / "run" / "diagnostics.csv")
    assert diag["A_f"].tolist() == pytest.approx([0.5] * 4, rel=1e-6)


def test_lora_run_trains_adapters_only(e2e_cache: Path, tmp_path: Path) -> None:
    cfg = micro_cfg(e2e_cache, "method=blur_npo", "trainer.max_steps=3", "eval_reference_models=false",
                    "model.lora={r:4,alpha:8,target_modules:[q_proj,v_proj]}", "save_model=true")
    summary = run_experiment(cfg, tmp_path / "run", console_print=False)
    diag = pd.read_csv(tmp_path / "run" / "diagnostics.csv")
    assert diag["A_f"].tolist() == pytest.approx([1.0] * 3, rel=1e-6)
    assert summary["steps"] == 3
    saved = sorted(p.name for p in (tmp_path / "run" / "model").iterdir())
    assert "model.safetensors" in saved and not any("adapter" in name for name in saved)  # merged, plain model


def test_bf16_mixed_precision_run_forgets_and_saves_in_the_loaded_dtype(e2e_cache: Path, tmp_path: Path) -> None:
    """model.dtype=bfloat16 + trainer.mixed_precision=bf16: float32 masters during unlearning, then the model is
    evaluated and saved in bf16, like the Original and Retain rows it is compared with."""
    from safetensors import safe_open

    cfg = micro_cfg(e2e_cache, "method=blur_npo", "model.dtype=bfloat16", "trainer.mixed_precision=bf16",
                    "save_model=true")
    run_dir = tmp_path / "run"
    summary = run_experiment(cfg, run_dir, console_print=False)
    original = json.loads((run_dir / "references.json").read_text())["Original"]
    assert summary["forget_prob"] < 0.7 * original["forget_prob"], (summary, original)
    diag = pd.read_csv(run_dir / "diagnostics.csv")
    assert diag["A_f"].tolist() == pytest.approx([1.0] * len(diag), rel=1e-6)
    with safe_open(str(run_dir / "model" / "model.safetensors"), framework="pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    assert dtypes == {"BF16"}, dtypes


def test_lora_kl_run_with_the_adapter_disabled_reference_equals_the_copy(e2e_cache: Path, tmp_path: Path) -> None:
    """Under LoRA, `auto` takes the base with adapters disabled for KL (no copy); the run's diagnostics equal
    the run with the frozen copy (`method.reference=copy`)."""
    from unlearn.pipeline import plan, reference_kind

    common = ["method=blur_npo", "method.retain.name=kl", "trainer.max_steps=3", "eval_reference_models=false",
              "model.lora={r:4,alpha:8,target_modules:[q_proj,v_proj]}"]
    auto_cfg, copy_cfg = micro_cfg(e2e_cache, *common), micro_cfg(e2e_cache, *common, "method.reference=copy")
    assert reference_kind(plan(auto_cfg)) == "adapters" and reference_kind(plan(copy_cfg)) == "copy"
    run_experiment(auto_cfg, tmp_path / "auto", console_print=False)
    run_experiment(copy_cfg, tmp_path / "copy", console_print=False)
    a, c = (pd.read_csv(tmp_path / d / "diagnostics.csv") for d in ("auto", "copy"))
    assert len(a) == 3
    for k in ("loss_f", "loss_r", "norm_f", "norm_r", "cos_fr"):
        assert a[k].tolist() == pytest.approx(c[k].tolist(), rel=1e-5, abs=1e-7), k
