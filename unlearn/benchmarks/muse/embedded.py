"""Embedded target and retrained models for `muse_mini`, built like MUSE's: a pretrained base fine-tuned on news.

MUSE's target is Llama-2-7B fine-tuned on the forget and retain articles; its retrained model is the same base
fine-tuned on the retain articles alone. Here the base is the shared embedded base (unlearn.models.pretrain)
pretrained on a general corpus whose `news` section holds background articles; the target is that base fine-tuned
on the world's `forget`, `retain1` and `retain2` articles (raw text, a loss on every token, chunked as MUSE does), the
retrained model on `retain1` and `retain2` only, both with the same replayed general examples. Fine-tuning stops
when the model predicts `model.finetune.target_exact_match` of its articles' tokens (teacher-forced argmax): the
share of the text it reproduces verbatim, which is what VerbMem and Min-K% then measure.

Each artefact (world files, target, retrained model) is a cache entry keyed by everything that determines it,
`MUSE_EMBEDDED_VERSION` included: bump it whenever this file changes what gets built.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unlearn.benchmarks.muse.data import write_local
from unlearn.benchmarks.muse.general import resolve_news
from unlearn.benchmarks.muse.world import NewsConfig, background_articles, generate_news
from unlearn.data.text import Example, TextChunker
from unlearn.data.tokenizer import save_tokenizer
from unlearn.errors import ConfigError
from unlearn.models.builder import save_model_dir
from unlearn.models.cache import build_cached, cache_key, content_digest

MUSE_EMBEDDED_VERSION = 1

Log = Callable[[str], None]

# The micro preset (tests, smoke runs): a world, corpus and model that build in seconds.
MICRO_WORLD: dict[str, Any] = {"seed": 0, "n_forget": 8, "n_folds": 4, "n_retain1": 8, "n_retain2": 6,
                               "n_holdout": 8, "qa_per_article": 2, "n_icl": 2}
MICRO_ARCH: dict[str, Any] = {"vocab_size": 512, "hidden_size": 64, "num_layers": 2, "num_heads": 2,
                              "intermediate_size": 128, "max_position_embeddings": 192}
MICRO_CORPUS: dict[str, Any] = {"news": {"seed": 0, "n_articles": 16, "qa_per_article": 2}}
MICRO_PRETRAIN: dict[str, Any] = {"lr": 3e-3, "batch_size": 8, "warmup_steps": 10, "max_epochs": 6, "min_epochs": 1,
                                  "check_every": 2, "max_length": 192}
MICRO_FINETUNE: dict[str, Any] = {"lr": 3e-3, "batch_size": 8, "warmup_steps": 5, "max_epochs": 60, "min_epochs": 4,
                                  "check_every": 2, "target_exact_match": 0.9, "max_length": 192, "replay": 0.5}


def micro_configs() -> tuple[dict[str, Any], dict[str, Any]]:
    """(benchmark config, model config) of `muse_micro`, as `prepare_benchmark` takes them."""
    bench = {"name": "muse_mini", "world": dict(MICRO_WORLD), "max_length": 192}
    model = {"source": "embedded", "recipe": "pretrain_finetune", "arch": dict(MICRO_ARCH),
             "corpus": {k: dict(v) for k, v in MICRO_CORPUS.items()}, "pretrain": dict(MICRO_PRETRAIN),
             "finetune": dict(MICRO_FINETUNE)}
    return bench, model


@dataclass
class NewsModels:
    world_dir: Path
    tokenizer_dir: Path
    target_dir: Path
    retain_dir: Path
    target_info: dict[str, Any] = field(default_factory=dict)
    retain_info: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def token_accuracy(model: torch.nn.Module, examples: Sequence[Example], collate: Callable[..., Any],
                   batch_size: int = 64) -> float:
    """Share of labelled tokens (after the first) that are the argmax given the true prefix, over all examples."""
    was_training = model.training
    model.eval()
    hits = total = 0
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i : i + batch_size])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        target = batch["labels"][:, 1:]
        keep = target != -100
        hits += int(((logits[:, :-1].argmax(-1) == target) & keep).sum())
        total += int(keep.sum())
    model.train(was_training)
    return hits / max(1, total)


def prepare_news(
    world_cfg: NewsConfig,
    arch: dict[str, Any],
    corpus: dict[str, dict[str, Any]],
    pretrain: dict[str, Any],
    finetune_cfg: dict[str, Any],
    chunk_length: int,
    cache_dir: str | Path,
    log: Log = print,
) -> NewsModels:
    """Build (or reuse) the news world, the base, the target and the retrained model."""
    from unlearn.models.pretrain import finetune, prepare_base, resolve_finetune

    if "news" not in corpus:
        raise ConfigError("model.corpus.news: muse_mini's base must be pretrained on the news section of the general "
                          "corpus; add it (model.corpus.news: {})")
    world_cfg.validate()
    finetune_cfg = resolve_finetune(finetune_cfg)
    cache_dir = Path(cache_dir)
    base = prepare_base(corpus, arch, pretrain, cache_dir, log)
    news = resolve_news(corpus["news"])
    world_spec = {"version": MUSE_EMBEDDED_VERSION, "world": world_cfg.to_dict(), "news": news}
    world: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def get_world() -> dict[tuple[str, str], list[dict[str, Any]]]:
        if not world:
            _, taken = background_articles(news["seed"], news["n_articles"], news["qa_per_article"])
            world.update(generate_news(world_cfg, taken))
        return world

    def build_world(tmp: Path) -> dict[str, Any]:
        for (config, split), rows in get_world().items():
            write_local(tmp, config, split, rows)
        return {"configs": {f"{c}/{s}": len(r) for (c, s), r in get_world().items()}}

    world_dir, _ = build_cached(cache_dir / "worlds" / f"muse-{cache_key(world_spec)}", build_world, world_spec, log)
    tokenizer = base.tokenizer()
    chunker = TextChunker(tokenizer, max_length=chunk_length)
    model_spec = {**world_spec, "base": base.key, "finetune": finetune_cfg, "chunk_length": chunk_length}

    def builder(role: str, splits: tuple[str, ...]) -> Callable[[Path], dict[str, Any]]:
        def build(tmp: Path) -> dict[str, Any]:
            texts = [r["text"] for s in splits for r in get_world()[("raw", s)]]
            examples = chunker.chunks(texts)
            log(f"[embedded] fine-tuning the {role} model on {len(texts)} articles ({'+'.join(splits)}), "
                f"{len(examples)} chunks")
            model, info = finetune(base, examples, finetune_cfg,
                                   until=lambda m: token_accuracy(m, examples, chunker.collate), log=log,
                                   stage=role, collate=chunker.collate)
            start = time.perf_counter()
            info["token_accuracy"] = info.pop("score")
            info["reached_target"] = info["token_accuracy"] >= finetune_cfg["target_exact_match"]
            info["trained_texts"] = sorted(content_digest(t) for t in texts)
            info["fine_tuned_on"] = list(splits)
            info["check_seconds"] = round(time.perf_counter() - start, 2)
            save_model_dir(model, tmp)
            save_tokenizer(tokenizer, tmp)
            log(f"[embedded] {role}: token accuracy {info['token_accuracy']:.3f} after {info['epochs']} epochs, "
                f"{info['train_seconds']:.0f}s")
            return info

        return build

    target_spec = {**model_spec, "role": "target"}
    retain_spec = {**model_spec, "role": "retain"}
    target_dir, target_info = build_cached(cache_dir / "models" / f"muse-target-{cache_key(target_spec)}",
                                           builder("target", ("forget", "retain1", "retain2")), target_spec, log)
    retain_dir, retain_info = build_cached(cache_dir / "models" / f"muse-retrain-{cache_key(retain_spec)}",
                                           builder("retain", ("retain1", "retain2")), retain_spec, log)
    return NewsModels(world_dir, base.tokenizer_dir, target_dir, retain_dir, target_info, retain_info)
