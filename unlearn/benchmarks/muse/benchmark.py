"""MUSE as a `Task`: the hub benchmarks (`muse`, with `corpus: news | books`) and the embedded `muse_mini`.

Both read the same schema (`load_muse`), unlearn on raw-text chunks (a loss on every token; MUSE's chunking of its
corpus, unlearn.data.text.TextChunker) of the forget split and of `retain1`, and are evaluated by the MUSE
evaluator against the retrained model (role `retain`).
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
    require_source,
    section,
)
from unlearn.benchmarks.muse.data import HUB_IDS, MuseData, check_forget_split, load_muse
from unlearn.benchmarks.muse.world import NewsConfig
from unlearn.data.text import TextChunker
from unlearn.errors import ConfigError

CHUNK_KEYS = frozenset({"max_length", "concatenate"})
#: Benchmark keys read by the MUSE evaluator's config (configs/eval/muse.yaml), accepted here unused.
EVAL_KEYS = frozenset({"verbmem_max_new_tokens", "knowmem_max_new_tokens", "eval_max_length", "auc_retrain"})
ROLE_NAMES = {"target": "Original", "retain": "Retrain"}
PROTOCOL_KEYS = frozenset({"start_from"})
COMMON_KEYS = SHARED_BENCH_KEYS | CHUNK_KEYS | EVAL_KEYS | PROTOCOL_KEYS | {"forget_split"}


def _start_from(bench: dict[str, Any]) -> str | None:
    """`benchmark.start_from`: a saved model directory to unlearn from instead of the target (sustainability)."""
    value = bench.get("start_from")
    if value is None:
        return None
    if not isinstance(value, str) or not (Path(value).expanduser() / "config.json").is_file():
        raise ConfigError(f"benchmark.start_from: {value!r} is not a saved model directory (no config.json); "
                          "give the `model` directory of a run made with save_model=true")
    return str(Path(value).expanduser())


def _chunk_length(bench: dict[str, Any], default: int) -> int:
    value = bench.get("max_length", default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ConfigError(f"benchmark.max_length: expected an integer >= 2 (tokens per training chunk), got {value!r}")
    return value


def muse_task(name: str, tag: str, data: MuseData, tokenizer: Any, models: dict[str, str], max_length: int,
              concatenate: bool, start: str | None = None) -> Task:
    """Chunk the forget and retain texts into training examples and wrap the evaluation data.

    The fingerprint covers every text the evaluator reads and the tokenizer's special ids, so a cached
    reference evaluation is reused only for the same evaluation data.
    """
    chunker = TextChunker(tokenizer, max_length=max_length, concatenate=concatenate)
    forget = chunker.chunks(data.forget_text)
    retain = chunker.chunks(data.retain_text)
    if not forget:
        raise ConfigError(f"benchmark {name}: the forget split gives no training chunk")
    evaluated = [data.verbmem, data.forget_qa, data.forget_qa_icl, data.retain_qa, data.retain_qa_icl,
                 data.privleak_forget, data.privleak_holdout]
    return Task(
        benchmark=name,
        tag=tag,
        tokenizer=tokenizer,
        forget=forget,
        retain=retain,
        collate=chunker.collate,
        models=models,
        eval_data={"muse": data},
        fingerprint=fingerprint("muse", tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer), evaluated),
        role_names=dict(ROLE_NAMES),
        start=start,
        info={"corpus": data.name, "n_forget_chunks": len(forget), "n_retain_chunks": len(retain),
              "chunk_length": max_length},
    )


@BENCHMARKS.register("muse")
class Muse(Benchmark):
    """Real MUSE: `muse-bench/MUSE-News` or `MUSE-Books` (or a local copy), hub target and retrained models."""

    provides = frozenset({"muse"})

    def __init__(self, bench: dict[str, Any], model: dict[str, Any]) -> None:
        super().__init__(bench, model)
        check_keys(bench, COMMON_KEYS | {"corpus", "source", "data_dir"},
                   "benchmark")
        check_keys(model, SHARED_MODEL_KEYS | {"path", "retain_path", "tokenizer"}, "model")
        check_model_common(model)
        self.corpus = bench.get("corpus", "news")
        if self.corpus not in HUB_IDS:
            raise ConfigError(f"benchmark.corpus: {self.corpus!r} not one of {', '.join(HUB_IDS)}")
        self.source = bench.get("source") or HUB_IDS[self.corpus]
        if not isinstance(self.source, str):
            raise ConfigError(f"benchmark.source: expected a hub dataset id, got {self.source!r}")
        self.data_dir = bench.get("data_dir")
        if self.data_dir is not None and (not isinstance(self.data_dir, str) or not self.data_dir):
            raise ConfigError(f"benchmark.data_dir: expected a directory or null, got {self.data_dir!r}")
        self.forget_split = bench.get("forget_split", "forget")
        check_forget_split(self.forget_split)
        self.start = _start_from(bench)
        self.max_length = _chunk_length(bench, 2048)
        self.concatenate = bench.get("concatenate", True)
        if not isinstance(self.concatenate, bool):
            raise ConfigError(f"benchmark.concatenate: expected true/false, got {self.concatenate!r}")
        require_source(model, "hub", "muse")
        self.path = model.get("path")
        if not isinstance(self.path, str) or not self.path:
            raise ConfigError(f"model.path: expected a hub model id or a directory, got {self.path!r}")
        self.retain_path = model.get("retain_path")
        if self.retain_path is not None and (not isinstance(self.retain_path, str) or not self.retain_path):
            raise ConfigError(f"model.retain_path: expected a hub model id, a directory or null, got "
                              f"{self.retain_path!r}")
        self.tokenizer_path = model.get("tokenizer") or self.path
        self.trust = bool(model.get("trust_remote_code", False))

    def prepare(self, cache_dir: Path, log: Log = print) -> Task:
        from unlearn.models.build import load_tokenizer

        where = self.data_dir or self.source
        log(f"[muse] loading {where} ({self.forget_split}) and tokenizer {self.tokenizer_path}")
        data = load_muse(self.corpus, self.source, self.forget_split, self.data_dir)
        tokenizer = load_tokenizer(self.tokenizer_path, trust_remote_code=self.trust)
        models = {"target": self.path}
        if self.retain_path is not None:
            models["retain"] = self.retain_path
        return muse_task("muse", self.tag, data, tokenizer, models, self.max_length, self.concatenate,
                         self.start)


@BENCHMARKS.register("muse_mini")
class MuseMini(SharedEmbeddedBase, Benchmark):
    """A synthetic news world, with a target and a retrained model fine-tuned from the shared embedded base."""

    provides = frozenset({"muse"})

    def __init__(self, bench: dict[str, Any], model: dict[str, Any]) -> None:
        from unlearn.models.pretrain import resolve_embedded_model

        super().__init__(bench, model)
        check_keys(bench, COMMON_KEYS | {"world"}, "benchmark")
        check_keys(model, SHARED_MODEL_KEYS | {"recipe", "arch", "corpus", "pretrain", "finetune"}, "model")
        check_model_common(model)
        require_source(model, "embedded", "muse_mini")
        self.world = NewsConfig.from_dict(section(bench.get("world"), "benchmark.world"))
        self.forget_split = bench.get("forget_split", "forget")
        check_forget_split(self.forget_split)
        self.start = _start_from(bench)
        built = resolve_embedded_model(model, "muse_mini")
        self.arch, self.corpus, self.pretrain, self.finetune = built.arch, built.corpus, built.pretrain, built.finetune
        self.max_length = _chunk_length(bench, self.finetune["max_length"])
        if self.max_length > self.finetune["max_length"]:
            raise ConfigError(f"benchmark.max_length: {self.max_length} exceeds model.finetune.max_length "
                              f"{self.finetune['max_length']}, the length the models were trained on")
        if bench.get("concatenate", False) is not False:
            raise ConfigError("benchmark.concatenate: muse_mini chunks each article on its own (set it false)")

    def prepare(self, cache_dir: Path, log: Log = print) -> Task:
        from unlearn.benchmarks.muse.embedded import prepare_news
        from unlearn.data.tokenizer import load_trained_tokenizer

        built = prepare_news(self.world, self.arch, self.corpus, self.pretrain, self.finetune, self.max_length,
                             cache_dir, log)
        tokenizer = load_trained_tokenizer(built.tokenizer_dir)
        data = load_muse("news_mini", "muse_mini", self.forget_split, data_dir=built.world_dir)
        models = {"target": str(built.target_dir), "retain": str(built.retain_dir)}
        return muse_task("muse_mini", self.tag, data, tokenizer, models, self.max_length, concatenate=False,
                         start=self.start)
