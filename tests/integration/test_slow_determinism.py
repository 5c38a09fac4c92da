"""Slow check (`make test-slow`): an embedded build is deterministic on one machine.

Building the `tofu_micro` world, tokenizer, base, target and retain models twice (the two-stage recipe: pretrained
base, then fine-tuning), in two fresh caches, must give bit-identical files and weights: the seeds fix everything
that can be fixed on one CPU. Builds on different CPU
types are not expected to agree (different SIMD kernels round differently; see the README), which is why the
cache key cannot promise more than same-machine reproducibility.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unlearn.benchmarks.tofu.embedded import micro_configs, prepare_pretrained
from unlearn.benchmarks.tofu.world import WorldConfig
from unlearn.models.pretrain import resolve_finetune


def build(cache: Path):
    bench, model = micro_configs("forget10")
    template = model["prompt"]["template"]  # as prepare_benchmark completes the stages
    return prepare_pretrained(WorldConfig(**bench["world"]), model["arch"], model["corpus"],
                              {**model["pretrain"], "template": template},
                              resolve_finetune({**model["finetune"], "template": template}), "forget10", cache,
                              log=lambda _m: None)


@pytest.mark.slow
def test_micro_build_is_bit_identical_in_two_fresh_caches(tmp_path: Path) -> None:
    a, b = build(tmp_path / "one"), build(tmp_path / "two")
    assert a.target_dir.name == b.target_dir.name  # same spec, same cache key
    assert (a.tokenizer_dir / "tokenizer.json").read_bytes() == (b.tokenizer_dir / "tokenizer.json").read_bytes()
    (base_a,), (base_b,) = (tmp_path / "one" / "models").glob("base-*"), (tmp_path / "two" / "models").glob("base-*")
    pairs = (("base", base_a, base_b), ("target", a.target_dir, b.target_dir), ("retain", a.retain_dir, b.retain_dir))
    for role, da, db in pairs:
        wa, wb = load_file(str(da / "model.safetensors")), load_file(str(db / "model.safetensors"))
        assert wa.keys() == wb.keys(), role
        differing = [n for n in wa if not torch.equal(wa[n], wb[n])]
        assert not differing, f"{role}: {len(differing)} tensors differ between two builds, e.g. {differing[:3]}"
