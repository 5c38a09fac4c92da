"""WMDP as a `Task`: real WMDP (`wmdp`: bio/cyber forget corpora, wikitext retain, Zephyr-7B) and the embedded
`wmdp_mini` (`wmdp_micro` is its micro preset).

Both unlearn on raw text chunks (forget: the hazardous corpora; retain: general text) and are scored by the
lm-evaluation-harness stage (`eval=lm_eval`): `wmdp_bio`, `wmdp_cyber`, `mmlu` for the real one, the world's own
4-choice tasks `wmdp_mini_bio`, `wmdp_mini_cyber`, `wmdp_mini_general` (built from `tasks/wmdp_mini.yaml`, reading the
JSONL the build wrote) for the embedded one. WMDP has no retain model: only the Original row is a reference.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

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
    require_source,
    section,
)
from unlearn.benchmarks.wmdp.world import HAZARDOUS, TOPICS, WorldConfig
from unlearn.data.text import TextChunker
from unlearn.errors import ConfigError

TASK_TEMPLATE = Path(__file__).parent / "tasks" / "wmdp_mini.yaml"
MINI_TASKS = {f"wmdp_mini_{t}": t for t in TOPICS}
#: Benchmark keys of both WMDP benchmarks besides the shared ones: the evaluator's default task list
#: (`eval.lm_eval.tasks` reads it), chunk length, and how many retain chunks to draw from.
WMDP_BENCH_KEYS = SHARED_BENCH_KEYS | {"lm_eval_tasks", "max_length", "max_retain"}


def _positive_int(bench: dict[str, Any], key: str, default: int | None) -> int | None:
    value = bench.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"benchmark.{key}: expected a positive integer, got {value!r}")
    return value


def mini_task_configs(world_dir: Path, bos: str | None) -> dict[str, dict[str, Any]]:
    """lm-eval task configs of the embedded world: the shipped template with the task name and its JSONL file.

    The stem is prefixed with the bos token's text: the models were trained on texts that start with bos, and
    lm-eval adds no special tokens when the context already starts with it.
    """
    template = yaml.safe_load(TASK_TEMPLATE.read_text())
    out = {}
    for name, topic in MINI_TASKS.items():
        cfg = copy.deepcopy(template)
        path = world_dir / f"{topic}_mcq.jsonl"
        if not path.exists():
            raise ConfigError(f"benchmark: missing evaluation file {path} (delete the cache entry to rebuild it)")
        cfg["task"] = name
        cfg["dataset_kwargs"] = {"data_files": {"test": str(path)}}
        cfg["doc_to_text"] = (bos or "") + cfg["doc_to_text"]
        out[name] = cfg
    return out


@BENCHMARKS.register("wmdp_mini")
class WmdpMini(SharedEmbeddedBase, Benchmark):
    """The embedded WMDP world and its fine-tuned target, built or reused from the cache."""

    provides = frozenset({"lm_eval"})

    def __init__(self, bench: dict[str, Any], model: dict[str, Any]) -> None:
        from unlearn.benchmarks.tofu.benchmark import EMBEDDED_MODEL_KEYS
        from unlearn.models.pretrain import resolve_embedded_model

        super().__init__(bench, model)
        check_keys(bench, WMDP_BENCH_KEYS | {"world"}, "benchmark")
        check_keys(model, SHARED_MODEL_KEYS | EMBEDDED_MODEL_KEYS, "model")
        check_model_common(model)
        require_source(model, "embedded", "wmdp_mini")
        self.world = WorldConfig.from_dict(section(bench.get("world"), "benchmark.world"))
        self.max_length = _positive_int(bench, "max_length", 128)
        self.max_retain = _positive_int(bench, "max_retain", None)
        template = section(model.get("prompt"), "model.prompt").get("template")

        def with_template(stage: dict[str, Any], key: str) -> dict[str, Any]:
            """The same base as the QA benchmarks: its QA pairs use the prompt template (unless a stage sets one)."""
            return stage if template is None else {**stage, "template": stage.get("template", template)}

        built = resolve_embedded_model(model, "wmdp_mini", with_template)
        self.arch, self.corpus, self.pretrain, self.finetune = built.arch, built.corpus, built.pretrain, built.finetune
        if "tofu" not in self.corpus:
            raise ConfigError("model.corpus.tofu: wmdp_mini's retain text is the general corpus's tofu section "
                              "(biographies and statements); add it (model.corpus.tofu: {})")

    def prepare(self, cache_dir: Path, log: Log = print) -> Task:
        from unlearn.benchmarks.wmdp.embedded import prepare_embedded_wmdp, read_jsonl
        from unlearn.data.tokenizer import load_trained_tokenizer
        from unlearn.models.pretrain import general_corpus

        built = prepare_embedded_wmdp(self.world, self.arch, self.corpus, self.pretrain, self.finetune, cache_dir,
                                      log)
        tokenizer = load_trained_tokenizer(built.tokenizer_dir)
        chunker = TextChunker(tokenizer, max_length=self.max_length)
        forget = chunker.chunks(r["text"] for t in HAZARDOUS for r in read_jsonl(built.world_dir /
                                                                                 f"{t}_documents.jsonl"))
        retain_docs = general_corpus({"tofu": self.corpus["tofu"]})["tofu"].documents
        retain = chunker.chunks(retain_docs)[: self.max_retain]
        tasks = mini_task_configs(built.world_dir, tokenizer.bos_token)
        mcq = {t: read_jsonl(built.world_dir / f"{t}_mcq.jsonl") for t in TOPICS}
        return Task(
            benchmark="wmdp_mini", tag=self.tag, tokenizer=tokenizer, forget=forget, retain=retain,
            collate=chunker.collate, models={"target": str(built.target_dir)}, eval_data={"lm_eval": tasks},
            fingerprint=fingerprint("wmdp_mini", tasks, mcq),
            info={"n_forget": len(forget), "n_retain": len(retain),
                  "target_accuracy": built.info.get("mcq_accuracy_by_topic")},
        )


@BENCHMARKS.register("wmdp")
class Wmdp(Benchmark):
    """Real WMDP: forget corpora (`benchmark.forget`, hub or local JSONL), retain text (`benchmark.retain`) and a
    hub (or local) target model; scored by lm-eval's wmdp_bio, wmdp_cyber and mmlu."""

    provides = frozenset({"lm_eval"})

    def __init__(self, bench: dict[str, Any], model: dict[str, Any]) -> None:
        from unlearn.benchmarks.wmdp.data import resolve_corpora

        super().__init__(bench, model)
        check_keys(bench, WMDP_BENCH_KEYS | {"forget", "retain", "max_texts"}, "benchmark")
        check_keys(model, SHARED_MODEL_KEYS | {"path"}, "model")
        check_model_common(model)
        require_source(model, "hub", "wmdp")
        self.path = model.get("path")
        if not isinstance(self.path, str) or not self.path:
            raise ConfigError(f"model.path: expected a hub model id or a directory, got {self.path!r}")
        self.forget = resolve_corpora(bench.get("forget"), "benchmark.forget")
        self.retain = resolve_corpora(bench.get("retain"), "benchmark.retain")
        self.max_length = _positive_int(bench, "max_length", 512)
        self.max_texts = _positive_int(bench, "max_texts", None)
        self.max_retain = _positive_int(bench, "max_retain", None)
        self.trust = bool(model.get("trust_remote_code", False))

    def prepare(self, cache_dir: Path, log: Log = print) -> Task:
        from unlearn.benchmarks.wmdp.data import load_corpora
        from unlearn.models.build import load_tokenizer

        log(f"[wmdp] loading forget corpora {[c['name'] for c in self.forget]}, retain "
            f"{[c['name'] for c in self.retain]} and tokenizer {self.path}")
        forget_texts = load_corpora(self.forget, "benchmark.forget", self.max_texts)
        retain_texts = load_corpora(self.retain, "benchmark.retain", self.max_texts)
        tokenizer = load_tokenizer(self.path, trust_remote_code=self.trust)
        chunker = TextChunker(tokenizer, max_length=self.max_length)
        forget = chunker.chunks(forget_texts)
        retain = chunker.chunks(retain_texts)[: self.max_retain]
        return Task(
            benchmark="wmdp", tag=self.tag, tokenizer=tokenizer, forget=forget, retain=retain,
            collate=chunker.collate, models={"target": self.path}, eval_data={},
            fingerprint=fingerprint("wmdp", self.forget, self.retain, self.max_length, self.max_texts),
            info={"n_forget": len(forget), "n_retain": len(retain)},
        )


__all__ = ["MINI_TASKS", "Wmdp", "WmdpMini", "mini_task_configs"]
