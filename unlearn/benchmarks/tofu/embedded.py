"""Embedded target and retain models for `tofu_mini`, built like TOFU's and cached on disk.

TOFU's protocol needs two models: a *target* fine-tuned on every fictitious author (what we unlearn from) and
a *retain* model fine-tuned on everything except the forget split (the gold standard that forget quality is
measured against). For the embedded benchmark both are tiny Llamas fine-tuned from a shared pretrained base
(`prepare_pretrained`, the default recipe; docs/worlds.md) or, under `model.recipe: scratch`, trained from random
init on the world alone (`prepare_embedded`, the earlier recipe), until they reproduce their training answers,
which is what makes the forget set's knowledge real and measurable.

Each artefact (world files, tokenizer, target, one retain model per forget split) is a cache entry keyed by a
hash of everything that determines it, including `EMBEDDED_VERSION`: bump it whenever this file changes what
gets built.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unlearn.benchmarks.tofu.world import (
    WorldConfig,
    generate_world,
    pretraining_rows,
    retain_split_for,
    world_texts,
    write_world,
)
from unlearn.data.format import DEFAULT_TEMPLATE, QAFormatter
from unlearn.data.tokenizer import load_trained_tokenizer, save_tokenizer, train_tokenizer
from unlearn.errors import ConfigError
from unlearn.models.builder import (
    encode_qa,
    greedy_exact_match,
    resolve_arch,
    resolve_train,
    save_model_dir,
    teacher_forced_exact_match,
    train_model,
)
from unlearn.models.cache import build_cached, cache_key, content_digest

EMBEDDED_VERSION = 2
"""Part of every cache key; bump when the world generator, tokenizer or training code changes results."""

# The micro preset: a world and model small enough to build in seconds (tests, smoke runs), where the target
# still memorises its training answers, so unlearning has something to remove.
MICRO_WORLD: dict[str, Any] = {
    "seed": 0,
    "n_authors": 20,
    "qa_per_author": 4,
    "n_perturbed": 3,
    "n_holdout_authors": 2,
    "n_real_authors": 6,
    "n_world_facts": 6,
}
MICRO_ARCH: dict[str, Any] = {
    "vocab_size": 512,
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 128,
}
MICRO_PRETRAIN: dict[str, Any] = {
    "lr": 3e-3,
    "batch_size": 8,
    "warmup_steps": 10,
    "max_epochs": 150,
    "min_epochs": 4,
    "check_every": 2,
    "target_exact_match": 0.95,
}

# The micro general corpus and stages of the pretrain-then-fine-tune recipe (same model size as above).
MICRO_CORPUS: dict[str, Any] = {
    "tofu": {"seed": 0, "n_people": 12, "facts_per_person": 4, "bios_per_person": 1, "qa_fraction": 0.5,
             "n_real_authors": 6, "n_world_facts": 6, "n_perturbed": 3, "statements_per_fact": 2},
}
MICRO_BASE: dict[str, Any] = {**MICRO_PRETRAIN, "target_exact_match": 0.9}
MICRO_FINETUNE: dict[str, Any] = {**MICRO_PRETRAIN, "replay": 0.5}

Log = Callable[[str], None]


def micro_configs(forget_split: str = "forget10", recipe: str = "pretrain_finetune"
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(benchmark config, model config) of the micro tofu_mini benchmark, as `prepare_benchmark` takes them.

    `recipe` is `pretrain_finetune` (the default recipe: a micro base, then fine-tuning) or `scratch`.
    """
    bench = {"name": "tofu_mini", "forget_split": forget_split, "world": dict(MICRO_WORLD)}
    model: dict[str, Any] = {
        "source": "embedded",
        "recipe": recipe,
        "arch": dict(MICRO_ARCH),
        "prompt": {"template": DEFAULT_TEMPLATE, "use_chat_template": False},
    }
    if recipe == "scratch":
        model["pretrain"] = dict(MICRO_PRETRAIN)
    else:
        model.update({"corpus": {k: dict(v) for k, v in MICRO_CORPUS.items()}, "pretrain": dict(MICRO_BASE),
                      "finetune": dict(MICRO_FINETUNE)})
    return bench, model


@dataclass
class EmbeddedModels:
    """Paths of the prepared embedded benchmark (all inside the cache)."""

    world_dir: Path
    tokenizer_dir: Path
    target_dir: Path
    retain_dir: Path
    target_info: dict[str, Any] = field(default_factory=dict)
    retain_info: dict[str, Any] = field(default_factory=dict)



def prepare_embedded(
    world_cfg: WorldConfig,
    arch: dict[str, Any] | None,
    train: dict[str, Any] | None,
    forget_split: str,
    cache_dir: str | Path,
    log: Log = print,
) -> EmbeddedModels:
    """Build (or reuse from `cache_dir`) the world, tokenizer, target model and the retain model of a split."""
    world_cfg.validate()
    arch = resolve_arch(arch)
    train = resolve_train(train)
    retain_split = retain_split_for(forget_split)
    cache_dir = Path(cache_dir)
    import tokenizers
    import transformers

    # Library versions are part of the key: a new torch/transformers can change training numerics.
    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }
    world_spec = {"version": EMBEDDED_VERSION, "world": world_cfg.to_dict()}
    tok_spec = {**world_spec, "vocab_size": arch["vocab_size"], "template": train["template"], "libs": versions}
    model_spec = {**tok_spec, "arch": arch, "train": train}
    target_spec = {**model_spec, "role": "target"}
    retain_spec = {**model_spec, "role": "retain", "forget_split": forget_split}

    world: dict[str, list[dict]] = {}

    def get_world() -> dict[str, list[dict]]:
        if not world:
            world.update(generate_world(world_cfg))
        return world

    def build_world(tmp: Path) -> dict[str, Any]:
        write_world(world_cfg, tmp)
        return {"configs": {k: len(v) for k, v in get_world().items()}}

    world_dir, _ = build_cached(cache_dir / "worlds" / cache_key(world_spec), build_world, world_spec, log)

    def build_tok(tmp: Path) -> dict[str, Any]:
        # Prompts are tokenised as whole formatted prompts and answers on their own (QAFormatter's exact
        # boundary), so the tokenizer learns those very strings: "Question:" becomes one token, not five.
        texts = [train["template"].format(question=q) for q in world_texts(get_world(), "questions")]
        texts += world_texts(get_world(), "answers")
        tok = train_tokenizer(texts, arch["vocab_size"], model_max_length=train["max_length"])
        save_tokenizer(tok, tmp)
        return {"vocab_size": len(tok)}

    tok_dir, _ = build_cached(cache_dir / "tokenizers" / cache_key(tok_spec), build_tok, tok_spec, log)
    tokenizer = load_trained_tokenizer(tok_dir)

    def builder(role: str) -> Callable[[Path], dict[str, Any]]:
        def build(tmp: Path) -> dict[str, Any]:
            rows = pretraining_rows(get_world(), role, forget_split if role == "retain" else None)
            log(
                f"[embedded] training {role} model on {len(rows)} QA rows"
                + (f" ({retain_split})" if role == "retain" else "")
            )
            model, info = train_model(rows, tokenizer, arch, train, log)
            save_model_dir(model, tmp)
            save_tokenizer(tokenizer, tmp)
            log(
                f"[embedded] {role}: exact match {info['exact_match']:.3f} after {info['epochs']} epochs, "
                f"{info['train_seconds']:.0f}s, {info['param_count']} params"
            )
            return info

        return build

    target_dir, target_info = build_cached(
        cache_dir / "models" / f"target-{cache_key(target_spec)}", builder("target"), target_spec, log
    )
    retain_dir, retain_info = build_cached(
        cache_dir / "models" / f"{retain_split}-{cache_key(retain_spec)}", builder("retain"), retain_spec, log
    )
    return EmbeddedModels(world_dir, tok_dir, target_dir, retain_dir, target_info, retain_info)


def row_digest(row: dict[str, Any]) -> str:
    """A short hash of one QA row's text: build records list these, so what a model trained on can be checked."""
    return content_digest(f"{row['question']}\n{row['answer']}")


def prepare_pretrained(
    world_cfg: WorldConfig,
    arch: dict[str, Any],
    corpus: dict[str, dict[str, Any]],
    pretrain: dict[str, Any],
    finetune_cfg: dict[str, Any],
    forget_split: str,
    cache_dir: str | Path,
    log: Log = print,
) -> EmbeddedModels:
    """The TOFU recipe on the embedded world: a general base (shared, cached), then fine-tuning.

    The base model is pretrained on the general corpus (`unlearn.models.pretrain`), whose TOFU section holds the
    real authors and world facts that model utility measures. The target is the base fine-tuned on every fictitious
    author, the retain model the same base fine-tuned on the retain split only, both with the same replayed general
    examples. Each build records a digest of every fine-tuning row (`trained_rows`), so tests can check from the
    record itself that the retain model never saw the forget split.
    """
    from unlearn.benchmarks.tofu.general import GeneralConfig, generate_general
    from unlearn.models.pretrain import finetune, prepare_base, resolve_finetune

    if "tofu" not in corpus:
        raise ConfigError("model.corpus.tofu: tofu_mini's real authors and world facts come from the general "
                          "corpus's tofu section; add it (model.corpus.tofu: {})")
    world_cfg.validate()
    finetune_cfg = resolve_finetune(finetune_cfg)
    retain_split = retain_split_for(forget_split)
    cache_dir = Path(cache_dir)
    base = prepare_base(corpus, arch, pretrain, cache_dir, log)
    general_cfg = GeneralConfig.from_dict(corpus["tofu"])
    world_spec = {"version": EMBEDDED_VERSION, "world": world_cfg.to_dict(), "general": general_cfg.to_dict()}
    world: dict[str, list[dict]] = {}

    def get_world() -> dict[str, list[dict]]:
        if not world:
            world.update(generate_world(world_cfg, general=generate_general(general_cfg)))
        return world

    def build_world(tmp: Path) -> dict[str, Any]:
        write_world(world_cfg, tmp, get_world())
        return {"configs": {k: len(v) for k, v in get_world().items()}}

    world_dir, _ = build_cached(cache_dir / "worlds" / cache_key(world_spec), build_world, world_spec, log)
    tokenizer = base.tokenizer()
    formatter = QAFormatter(tokenizer, template=finetune_cfg["template"], max_length=finetune_cfg["max_length"])
    model_spec = {**world_spec, "base": base.key, "finetune": finetune_cfg}

    def builder(role: str, split: str) -> Callable[[Path], dict[str, Any]]:
        def build(tmp: Path) -> dict[str, Any]:
            rows = [{"question": r["question"], "answer": r["answer"]} for r in get_world()[split]]
            log(f"[embedded] fine-tuning the {role} model on {len(rows)} QA rows ({split})")
            encoded = encode_qa(rows, formatter, "model.finetune.max_length")
            model, info = finetune(base, encoded, finetune_cfg,
                                   until=lambda m: teacher_forced_exact_match(m, formatter, encoded), log=log,
                                   stage=role)
            start = time.perf_counter()
            info["exact_match_teacher_forced"] = info.pop("score")
            info["exact_match"] = greedy_exact_match(model, formatter, rows)
            info["greedy_check_seconds"] = round(time.perf_counter() - start, 2)
            info["reached_target"] = info["exact_match"] >= finetune_cfg["target_exact_match"]
            info["trained_rows"] = sorted(row_digest(r) for r in rows)
            info["fine_tuned_on"] = split
            save_model_dir(model, tmp)
            save_tokenizer(tokenizer, tmp)
            log(f"[embedded] {role}: exact match {info['exact_match']:.3f} after {info['epochs']} epochs, "
                f"{info['train_seconds']:.0f}s, {info['param_count']} params")
            return info

        return build

    target_spec = {**model_spec, "role": "target"}
    retain_spec = {**model_spec, "role": "retain", "forget_split": forget_split}
    target_dir, target_info = build_cached(
        cache_dir / "models" / f"target-{cache_key(target_spec)}", builder("target", "full"), target_spec, log
    )
    retain_dir, retain_info = build_cached(
        cache_dir / "models" / f"{retain_split}-{cache_key(retain_spec)}", builder("retain", retain_split),
        retain_spec, log
    )
    return EmbeddedModels(world_dir, base.tokenizer_dir, target_dir, retain_dir, target_info, retain_info)
