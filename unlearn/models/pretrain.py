"""Embedded models built the way real targets are: a general pretrained base, then fine-tuning stages.

Real unlearning targets are pretrained language models fine-tuned on the data to forget (TOFU: Llama-3.2-1B
fine-tuned on fictitious authors; MUSE: Llama-2-7B fine-tuned on news or books; WMDP: a chat model whose pretraining
saw the hazardous text). What is forgotten is a small addition to a large body of general knowledge, and utility is
measured on that general knowledge. A tiny model trained from scratch on the forget and retain sets alone is in a
different regime: every fact shares its few templates with every other fact, so pushing one answer down pushes all
of them down (issue 12's collapse-and-recover trajectories).

This module builds the embedded equivalent:

1. a **general corpus** (`model.corpus`): sections contributed by the benchmarks (`CORPUS_SECTIONS`), each a list
   of free-text documents (trained on every token) and question-answer pairs (trained on the answer) — TOFU's
   section holds biographies of public figures in many paraphrases, real authors and world facts;
2. a **base model** (`prepare_base`): a tokenizer fitted to that corpus and a Llama pretrained on it, cached once and
   shared by every embedded benchmark, split and world (its cache key enters every model fine-tuned from it);
3. **fine-tuning** (`finetune`): a copy of the base trained on a benchmark's data (TOFU's fictitious-author QA), with
   a share of general examples replayed (`model.finetune.replay`) so the base's knowledge is kept, as a fine-tuned
   LLM keeps most of its pretraining. The target and the retain (retrained) model are fine-tuned from the same base
   with the same replay set, the retain model without the forget split.

Caching and the build-info records are the callers' (`unlearn.models.cache.build_cached`); this module only
composes the stages.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unlearn.data.format import QAFormatter
from unlearn.data.text import Example, TextChunker, pad_collate
from unlearn.data.tokenizer import load_trained_tokenizer, save_tokenizer, train_tokenizer
from unlearn.errors import ConfigError
from unlearn.models.builder import (
    DEFAULT_TRAIN,
    Log,
    count_parameters,
    encode_qa,
    new_model,
    resolve_arch,
    resolve_train,
    save_model_dir,
    teacher_forced_exact_match,
    train_stage,
)
from unlearn.models.cache import build_cached, cache_key
from unlearn.registry import Registry

PRETRAIN_VERSION = 1
"""Part of every base model's cache key; bump when this module changes what gets built."""

RECIPES = ("pretrain_finetune", "scratch")
"""`model.recipe`: `pretrain_finetune` (general base, then fine-tuning; the default) or `scratch` (one stage from
random init on the benchmark's data alone: the recipe of earlier results, kept so they can be reproduced)."""

PRETRAIN_DEFAULTS: dict[str, Any] = {**DEFAULT_TRAIN, "max_epochs": 40, "min_epochs": 4, "target_exact_match": 0.9}
FINETUNE_DEFAULTS: dict[str, Any] = {**DEFAULT_TRAIN}
FINETUNE_EXTRA: dict[str, Any] = {"replay": 0.5}
"""Fine-tuning settings beyond one training stage's: `replay`, general examples mixed in per fine-tuning example."""


@dataclass
class CorpusSection:
    """One benchmark's part of the general corpus.

    documents: free text, trained on every token. qa: question-answer pairs, trained on the answer. checked: the QA
    pairs the base must reproduce (TOFU: the real authors and world facts that model utility measures); pretraining
    stops when all sections' checked pairs reach `model.pretrain.target_exact_match`. Facts stated only as text or
    not checked are general background the base need not recite.
    """

    documents: list[str]
    qa: list[dict[str, str]]
    checked: list[dict[str, str]] = field(default_factory=list)


#: name -> factory(settings dict) -> CorpusSection; `model.corpus.<name>` holds the settings.
CORPUS_SECTIONS: Registry[CorpusSection] = Registry("general corpus section", "model.corpus")


def resolve_recipe(model: dict[str, Any]) -> str:
    recipe = model.get("recipe", "scratch")
    if recipe not in RECIPES:
        raise ConfigError(f"model.recipe: {recipe!r} not one of {', '.join(RECIPES)}")
    return recipe


def resolve_corpus(corpus: Any) -> dict[str, dict[str, Any]]:
    """`model.corpus` as {section: settings}; unknown sections name the key. The sections are built lazily."""
    import unlearn.benchmarks  # noqa: F401  (registers every benchmark's corpus section)

    if not isinstance(corpus, dict) or not corpus:
        raise ConfigError(f"model.corpus: expected a mapping of corpus sections ({', '.join(CORPUS_SECTIONS.names())})"
                          f", got {corpus!r}")
    out = {}
    for name, settings in corpus.items():
        CORPUS_SECTIONS.get(str(name))  # unknown name -> ConfigError listing the known ones
        if settings is not None and not isinstance(settings, dict):
            raise ConfigError(f"model.corpus.{name}: expected a mapping of settings, got {settings!r}")
        out[str(name)] = dict(settings or {})
    return out


@dataclass(frozen=True)
class EmbeddedModel:
    """The resolved `model` section of an embedded benchmark built with the `pretrain_finetune` recipe."""

    arch: dict[str, Any]
    corpus: dict[str, dict[str, Any]]
    pretrain: dict[str, Any]
    finetune: dict[str, Any]


StageHook = Callable[[dict[str, Any], str], dict[str, Any]]
"""Turns a stage's raw settings (and its key, for errors) into the settings to resolve: how a benchmark puts its
prompt template into the stages."""


def resolve_embedded_model(model: dict[str, Any], benchmark: str, stage: StageHook | None = None) -> EmbeddedModel:
    """Validate an embedded benchmark's `model.arch`, `model.corpus`, `model.pretrain` and `model.finetune` for the
    `pretrain_finetune` recipe (the one every embedded benchmark shares: one base, then fine-tuning).

    One place for what `tofu_mini`, `muse_mini` and `wmdp_mini` resolve alike, so the base they share is built
    from identically resolved settings (its cache key). `stage(settings, key)` adjusts each stage's raw settings
    first (the QA benchmarks' prompt template). Errors name the key, before anything is built.
    """
    from unlearn.benchmarks.base import section  # lazy: unlearn.benchmarks imports this module

    if resolve_recipe(model) != "pretrain_finetune":
        raise ConfigError(f"model.recipe: {benchmark} is built with the pretrain_finetune recipe (a base, then "
                          "fine-tuning)")
    arch = resolve_arch(section(model.get("arch"), "model.arch"))
    corpus = resolve_corpus(section(model.get("corpus"), "model.corpus"))
    pretrain = section(model.get("pretrain"), "model.pretrain")
    finetune = section(model.get("finetune"), "model.finetune")
    if stage is not None:
        pretrain, finetune = stage(pretrain, "model.pretrain"), stage(finetune, "model.finetune")
    return EmbeddedModel(arch=arch, corpus=corpus, pretrain=resolve_train(pretrain, "model.pretrain",
                                                                          PRETRAIN_DEFAULTS),
                         finetune=resolve_finetune(finetune))


def general_corpus(corpus: dict[str, dict[str, Any]]) -> dict[str, CorpusSection]:
    """Every configured section, built (deterministic in its settings)."""
    return {name: CORPUS_SECTIONS.build(name, **settings) for name, settings in resolve_corpus(corpus).items()}


def resolve_finetune(finetune: dict[str, Any] | None) -> dict[str, Any]:
    """Fine-tuning stage settings (one training stage's, plus `replay`), validated."""
    given = dict(finetune or {})
    extra = {k: given.pop(k) for k in list(given) if k in FINETUNE_EXTRA}
    out = resolve_train(given, "model.finetune", FINETUNE_DEFAULTS)
    replay = float(extra.get("replay", FINETUNE_EXTRA["replay"]))
    if isinstance(extra.get("replay"), bool) or not 0.0 <= replay <= 10.0:
        raise ConfigError(f"model.finetune.replay: expected a number in [0, 10], got {extra.get('replay')!r}")
    return {**out, "replay": replay}


# ---------------------------------------------------------------------------------------------------- the base
@dataclass
class Base:
    """A pretrained base model in the cache: its tokenizer, weights, cache key and build record."""

    tokenizer_dir: Path
    model_dir: Path
    key: str
    corpus: dict[str, dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)
    _sections: dict[str, CorpusSection] | None = None

    def sections(self) -> dict[str, CorpusSection]:
        if self._sections is None:
            self._sections = general_corpus(self.corpus)
        return self._sections

    def tokenizer(self) -> Any:
        return load_trained_tokenizer(self.tokenizer_dir)

    def load(self) -> torch.nn.Module:
        """A fresh float32 copy of the base weights (fine-tuning never touches the cached base)."""
        from unlearn.models.build import load_model

        return load_model(self.model_dir, dtype="float32")


def _libs() -> dict[str, str]:
    import tokenizers
    import transformers

    # Library versions are part of the key: a new torch/transformers can change training numerics.
    return {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def corpus_examples(
    sections: dict[str, CorpusSection], tokenizer: Any, formatter: QAFormatter, max_length: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """(document chunks, encoded QA pairs, encoded checked QA pairs) of the whole corpus, in section order."""
    chunker = TextChunker(tokenizer, max_length=max_length)
    docs: list[Example] = []
    qa: list[Example] = []
    checked: list[Example] = []
    for name, section in sections.items():
        docs += chunker.chunks(section.documents)
        qa += encode_qa(section.qa, formatter, f"model.corpus.{name}")
        checked += encode_qa(section.checked, formatter, f"model.corpus.{name}")
    return docs, qa, checked


def prepare_base(
    corpus: dict[str, dict[str, Any]],
    arch: dict[str, Any],
    pretrain: dict[str, Any],
    cache_dir: str | Path,
    log: Log = print,
) -> Base:
    """Build (or reuse) the tokenizer and the pretrained base model of `corpus` with `arch` and `pretrain` settings.

    The stage trains on every corpus document (all tokens) and QA pair (answer tokens) until the sections' checked QA
    pairs are reproduced at `target_exact_match` (teacher-forced exact match, equal to greedy) or `max_epochs`.
    """
    corpus = resolve_corpus(corpus)
    arch = resolve_arch(arch)
    pretrain = resolve_train(pretrain, "model.pretrain", PRETRAIN_DEFAULTS)
    cache_dir = Path(cache_dir)
    tok_spec = {"version": PRETRAIN_VERSION, "corpus": corpus, "vocab_size": arch["vocab_size"],
                "template": pretrain["template"], "libs": _libs()}
    base_spec = {**tok_spec, "arch": arch, "pretrain": pretrain, "role": "base"}
    sections: dict[str, CorpusSection] = {}

    def get_sections() -> dict[str, CorpusSection]:
        if not sections:
            sections.update(general_corpus(corpus))
        return sections

    def build_tok(tmp: Path) -> dict[str, Any]:
        texts: list[str] = []
        for section in get_sections().values():
            texts += section.documents
            texts += [pretrain["template"].format(question=r["question"]) for r in section.qa]
            texts += [r["answer"] for r in section.qa]
        tok = train_tokenizer(texts, arch["vocab_size"], model_max_length=pretrain["max_length"])
        save_tokenizer(tok, tmp)
        return {"vocab_size": len(tok), "n_texts": len(texts)}

    tok_dir, _ = build_cached(cache_dir / "tokenizers" / f"general-{cache_key(tok_spec)}", build_tok, tok_spec, log)
    key = cache_key(base_spec)

    def build_base(tmp: Path) -> dict[str, Any]:
        tokenizer = load_trained_tokenizer(tok_dir)
        formatter = QAFormatter(tokenizer, template=pretrain["template"], max_length=pretrain["max_length"])
        docs, qa, checked = corpus_examples(get_sections(), tokenizer, formatter, pretrain["max_length"])
        n_tokens = sum(len(e["input_ids"]) for e in docs + qa)
        log(f"[pretrain] base model: {len(docs)} document chunks + {len(qa)} QA pairs ({n_tokens} tokens), "
            f"stopping at exact match {pretrain['target_exact_match']} on {len(checked)} checked pairs")
        model = new_model(tokenizer, arch, pretrain["seed"], pretrain["max_length"])
        until = (lambda m: teacher_forced_exact_match(m, formatter, checked)) if checked else None
        info = train_stage(model, docs + qa, formatter.collate, pretrain, until=until, log=log, stage="pretrain")
        info.update({"qa_exact_match": info.pop("score"), "n_documents": len(docs), "n_qa": len(qa),
                     "n_tokens": n_tokens, "param_count": count_parameters(model),
                     "torch_threads": torch.get_num_threads()})
        save_model_dir(model, tmp)
        save_tokenizer(tokenizer, tmp)
        log(f"[pretrain] base: QA exact match {info['qa_exact_match']:.3f} after {info['epochs']} epochs, "
            f"{info['train_seconds']:.0f}s, {info['param_count']} params")
        return info

    model_dir, info = build_cached(cache_dir / "models" / f"base-{key}", build_base, base_spec, log)
    return Base(tok_dir, model_dir, key, corpus, info, sections or None)


# ---------------------------------------------------------------------------------------------------- fine-tuning
def replay_examples(
    base: Base, tokenizer: Any, formatter: QAFormatter, n: int, seed: int, max_length: int
) -> list[Example]:
    """General examples to replay while fine-tuning: every checked QA pair, then document chunks and other QA pairs
    drawn once (deterministically in `seed`) up to `n` examples in all.

    The checked pairs are what utility measures (TOFU's real authors and world facts); replaying all of them keeps
    that knowledge as a large pretrained model keeps its much-repeated general knowledge through a short fine-tune.
    Every model fine-tuned with the same settings replays the same examples, so the target and retain models differ
    only in the benchmark data they are fine-tuned on.
    """
    if n <= 0:
        return []
    docs, qa, checked = corpus_examples(base.sections(), tokenizer, formatter, max_length)
    seen = {tuple(e["input_ids"]) for e in checked}
    pool = [e for e in docs + qa if tuple(e["input_ids"]) not in seen]
    rng = random.Random(f"unlearn-replay-{seed}")
    k = max(0, min(n - len(checked), len(pool)))
    return [*checked, *(pool[i] for i in sorted(rng.sample(range(len(pool)), k)))]


def finetune(
    base: Base,
    examples: Sequence[Example],
    finetune_cfg: dict[str, Any],
    until: Callable[[torch.nn.Module], float] | None,
    log: Log = print,
    stage: str = "finetune",
    collate: Callable[[Sequence[Example]], dict[str, torch.Tensor]] | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Fine-tune a copy of the base on `examples` plus the replayed general examples.

    `until` scores the model on the benchmark's own data (e.g. exact match of its QA pairs); the stage stops when it
    reaches `target_exact_match`. Returns the model and the stage's record, which lists how many benchmark and replay
    examples were trained on.
    """
    cfg = resolve_finetune(finetune_cfg)
    tokenizer = base.tokenizer()
    formatter = QAFormatter(tokenizer, template=cfg["template"], max_length=cfg["max_length"])
    replay = replay_examples(base, tokenizer, formatter, round(cfg["replay"] * len(examples)), cfg["seed"],
                             cfg["max_length"])
    model = base.load()
    start = time.perf_counter()
    train = {k: v for k, v in cfg.items() if k != "replay"}
    info = train_stage(model, [*examples, *replay], collate or (lambda b: pad_collate(b, formatter.pad_id)), train,
                       until=until, log=log, stage=stage)
    info.update({"n_benchmark_examples": len(examples), "n_replay_examples": len(replay), "base": base.key,
                 "param_count": count_parameters(model), "wall_seconds": round(time.perf_counter() - start, 2),
                 "torch_threads": torch.get_num_threads()})  # a CPU may round differently at another count
    return model, info


__all__ = [
    "CORPUS_SECTIONS",
    "RECIPES",
    "Base",
    "CorpusSection",
    "EmbeddedModel",
    "finetune",
    "general_corpus",
    "prepare_base",
    "replay_examples",
    "resolve_corpus",
    "resolve_embedded_model",
    "resolve_finetune",
    "resolve_recipe",
    "save_model_dir",
]
