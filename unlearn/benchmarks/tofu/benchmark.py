"""TOFU as a `Task`: real TOFU from the hub (`tofu`) and its embedded version (`tofu_mini`, `tofu_micro`).

Both read the same configs and schema (`load_tofu`), train on question-answer pairs (loss on answer tokens only)
and are evaluated by the TOFU evaluator against a retain model that never saw the forget split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unlearn.benchmarks.base import (
    BENCHMARKS,
    SHARED_BENCH_KEYS,
    SHARED_MODEL_KEYS,
    Benchmark,
    Log,
    SharedEmbeddedBase,
    Task,
    check_keys,
    check_model_common,
    fingerprint,
    make_formatter,
    require_source,
    resolve_prompt,
    section,
)
from unlearn.benchmarks.tofu.data import TofuData, load_tofu
from unlearn.benchmarks.tofu.world import FORGET_SPLITS, WorldConfig
from unlearn.data.format import QAFormatter
from unlearn.errors import ConfigError


def _forget_split(bench: dict[str, Any]) -> str:
    split = bench.get("forget_split", "forget10")
    if split not in FORGET_SPLITS:
        raise ConfigError(f"benchmark.forget_split: {split!r} not one of {', '.join(FORGET_SPLITS)}")
    return split


#: Model keys of the embedded recipes (unlearn.models.pretrain): `recipe`, the architecture, the general corpus and
#: the stages' settings (`pretrain` is the only stage of the `scratch` recipe).
EMBEDDED_MODEL_KEYS = frozenset({"recipe", "arch", "corpus", "pretrain", "finetune"})


def _with_template(stage: dict[str, Any], prompt: dict[str, Any], key: str) -> dict[str, Any]:
    """A training stage's settings with the prompt template the models are scored with (a different one is an
    error: a model trained on one prompt and scored on another measures the prompt change)."""
    if "template" in stage and stage["template"] != prompt["template"]:
        raise ConfigError(f"{key}.template: must equal model.prompt.template (or be left out)")
    return {**stage, "template": prompt["template"]}


def tofu_task(name: str, data: TofuData, tokenizer: Any, formatter: QAFormatter, models: dict[str, str]) -> Task:
    """Encode TOFU data into a Task: QA training examples, the evaluator's data, and its fingerprint.

    The fingerprint covers every rendered evaluation prompt and every answer the evaluator scores, so a cached
    reference evaluation is reused only for exactly the same prompts (a chat template that writes today's date
    would otherwise hand yesterday's retain-model truth ratios to today's forget quality).
    """
    forget = [formatter.encode(r["question"], r["answer"]) for r in data.forget]
    retain = [formatter.encode(r["question"], r["answer"]) for r in data.retain]
    splits = {k: getattr(data, k) for k in ("forget", "retain_eval", "real_authors", "world_facts")}
    rendered = {k: [formatter.prompt(r["question"]) for r in rows] for k, rows in splits.items()}
    answers = {k: [[r["answer"], r.get("paraphrased_answer"), r.get("perturbed_answer")] for r in rows]
               for k, rows in splits.items()}
    return Task(
        benchmark=name,
        tag=data.name,
        tokenizer=tokenizer,
        forget=forget,
        retain=retain,
        collate=formatter.collate,
        models=models,
        eval_data={"tofu": data},
        formatter=formatter,
        fingerprint=fingerprint("tofu", formatter.max_length, formatter.bos_id, formatter.eos_id, rendered, answers),
        info={"forget_split": data.name, "n_forget": len(forget), "n_retain": len(retain)},
    )


@BENCHMARKS.register("tofu_mini")
class TofuMini(SharedEmbeddedBase, Benchmark):
    """Synthetic TOFU-style world + embedded target/retain models, built or reused from the cache."""

    provides = frozenset({"tofu"})

    def __init__(self, bench: dict[str, Any], model: dict[str, Any]) -> None:
        from unlearn.models.builder import resolve_arch, resolve_train
        from unlearn.models.pretrain import resolve_embedded_model, resolve_recipe

        super().__init__(bench, model)
        check_keys(bench, SHARED_BENCH_KEYS | {"forget_split", "world"}, "benchmark")
        check_keys(model, SHARED_MODEL_KEYS | EMBEDDED_MODEL_KEYS, "model")
        check_model_common(model)
        self.forget_split = _forget_split(bench)
        self.world = WorldConfig.from_dict(section(bench.get("world"), "benchmark.world"))
        require_source(model, "embedded", "tofu_mini")
        self.prompt = resolve_prompt(model)
        if self.prompt["use_chat_template"]:
            raise ConfigError("model.prompt.use_chat_template: embedded models have no chat template; set it false")
        self.recipe = resolve_recipe(model)
        prompt = self.prompt

        def with_template(stage: dict[str, Any], key: str) -> dict[str, Any]:
            return _with_template(stage, prompt, key)  # the models are trained with the prompt they are scored with

        if self.recipe == "scratch":
            self.arch = resolve_arch(section(model.get("arch"), "model.arch"))
            self.train = resolve_train(with_template(section(model.get("pretrain"), "model.pretrain"),
                                                     "model.pretrain"))
            return
        built = resolve_embedded_model(model, "tofu_mini", with_template)
        self.arch, self.corpus, self.pretrain, self.finetune = built.arch, built.corpus, built.pretrain, built.finetune

    def prepare(self, cache_dir: Path, log: Log = print) -> Task:
        from unlearn.benchmarks.tofu.embedded import prepare_embedded, prepare_pretrained
        from unlearn.data.tokenizer import load_trained_tokenizer

        if self.recipe == "scratch":
            built = prepare_embedded(self.world, self.arch, self.train, self.forget_split, cache_dir, log=log)
        else:
            built = prepare_pretrained(self.world, self.arch, self.corpus, self.pretrain, self.finetune,
                                       self.forget_split, cache_dir, log=log)
        tokenizer = load_trained_tokenizer(built.tokenizer_dir)
        formatter = make_formatter(tokenizer, self.prompt)
        data = load_tofu(built.world_dir, self.forget_split)
        models = {"target": str(built.target_dir), "retain": str(built.retain_dir)}
        return tofu_task("tofu_mini", data, tokenizer, formatter, models)

    def prepare_shared(self, cache_dir: Path, log: Log = print) -> None:
        if self.recipe != "scratch":  # the from-scratch recipe has no base: each world trains its own model
            super().prepare_shared(cache_dir, log)


@BENCHMARKS.register("tofu")
class Tofu(Benchmark):
    """Real TOFU (hub id or local copy) with hub (or local) target and retain models."""

    provides = frozenset({"tofu"})

    def __init__(self, bench: dict[str, Any], model: dict[str, Any]) -> None:
        super().__init__(bench, model)
        check_keys(bench, SHARED_BENCH_KEYS | {"source", "forget_split"}, "benchmark")
        check_keys(model, SHARED_MODEL_KEYS | {"path", "retain_path"}, "model")
        check_model_common(model)
        self.forget_split = _forget_split(bench)
        self.source = bench.get("source", "locuslab/TOFU")
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError(f"benchmark.source: expected a hub dataset id or a directory, got {self.source!r}")
        require_source(model, "hub", "tofu")
        self.path = model.get("path")
        if not isinstance(self.path, str) or not self.path:
            raise ConfigError(f"model.path: expected a hub model id or a directory, got {self.path!r}")
        self.retain_path = retain = model.get("retain_path")
        if retain is not None and (not isinstance(retain, str) or not retain):
            raise ConfigError(f"model.retain_path: expected a hub model id, a directory or null, got {retain!r}")
        self.trust = bool(model.get("trust_remote_code", False))
        self.prompt = resolve_prompt(model)

    def prepare(self, cache_dir: Path, log: Log = print) -> Task:
        from unlearn.models.build import load_tokenizer

        log(f"[tofu] loading {self.source} ({self.forget_split}) and tokenizer {self.path}")
        data = load_tofu(self.source, self.forget_split)
        tokenizer = load_tokenizer(self.path, trust_remote_code=self.trust)
        formatter = make_formatter(tokenizer, self.prompt)
        models = {"target": self.path}
        if self.retain_path is not None:
            models["retain"] = self.retain_path
        return tofu_task("tofu", data, tokenizer, formatter, models)
