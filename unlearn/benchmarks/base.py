"""The benchmark interface: a benchmark turns its config into a `Task`, the one thing the pipeline unlearns on.

A `Task` is benchmark-agnostic: encoded forget and retain training examples (question-answer pairs or raw-text
chunks, all as token ids with a loss mask), the reference models by role (`target` always; `retain` when the
benchmark has a model that never saw the forget set, as TOFU's retain and MUSE's retrained models; none for WMDP),
and, per evaluator, the data that evaluator reads. The pipeline never looks inside a benchmark's data, so TOFU,
MUSE and WMDP plug in the same way (the lm-evaluation-harness runner's "task" is the same idea).

A `Benchmark` validates its config in `__init__` (cheap; runs in the planner before anything is loaded) and does
the expensive work (loading or generating data, building embedded models) in `prepare`. Each error names the key a
user has to change.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor

from unlearn.data.format import DEFAULT_TEMPLATE, QAFormatter
from unlearn.errors import ConfigError
from unlearn.registry import Registry

Log = Callable[[str], None]
Example = dict[str, list[int]]
Collate = Callable[[Sequence[Example]], dict[str, Tensor]]

#: Reference roles. `target` is the model unlearning starts from; `retain` never saw the forget set (TOFU's retain
#: model, MUSE's retrained model) and is what forget quality and PrivLeak are measured against.
ROLES: tuple[str, ...] = ("target", "retain")
DEFAULT_ROLE_NAMES: dict[str, str] = {"target": "Original", "retain": "Retain"}


@dataclass
class Task:
    """What a prepared benchmark hands the pipeline.

    Attributes:
        benchmark: the benchmark's registry name (`benchmark.name`).
        tag: what is forgotten, for logs, run names and tables (`forget10`, `news/forget`, `bio+cyber`).
        tokenizer: the models' tokenizer.
        forget, retain: encoded training examples (`input_ids`, `labels` with -100 where no loss is taken,
            `attention_mask`), one list each; every objective is a mean over examples of these.
        collate: right-pads a list of examples into tensors.
        models: reference role -> model path or hub id (`target` required).
        eval_data: evaluator data name -> whatever that evaluator reads (e.g. `"tofu"` -> `TofuData`).
        formatter: the prompt formatter the models were trained / are scored with (QA-style evaluation).
        fingerprint: hash of everything evaluations read besides the model (rendered prompts, rows); part of
            every cached reference evaluation's key, so a changed prompt (a chat template's date, say) can never
            be served an old model's results.
        role_names: display names of the reference rows in tables.
        info: counts and settings for the run log.
        start: the model unlearning starts from when it is not `models["target"]` (MUSE's sustainability
            protocol: request k starts from request k-1's unlearned model); the reference rows stay the target's.
    """

    benchmark: str
    tag: str
    tokenizer: Any
    forget: list[Example]
    retain: list[Example]
    collate: Collate
    models: dict[str, str]
    eval_data: dict[str, Any]
    formatter: QAFormatter | None = None
    fingerprint: str = ""
    role_names: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ROLE_NAMES))
    info: dict[str, Any] = field(default_factory=dict)
    start: str | None = None

    def __post_init__(self) -> None:
        if "target" not in self.models:
            raise ValueError(f"benchmark {self.benchmark}: a task needs a 'target' model")
        unknown = sorted(set(self.models) - set(ROLES))
        if unknown:
            raise ValueError(f"benchmark {self.benchmark}: unknown model role(s) {unknown}; roles: {ROLES}")


class Benchmark(ABC):
    """Config -> `Task`. Subclasses register with `@BENCHMARKS.register(name)`.

    `provides` names the evaluator data the benchmark supplies (`eval_data` keys); the planner checks every
    configured evaluator against it before anything is loaded.
    """

    provides: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, bench: dict[str, Any], model: dict[str, Any]) -> None:
        self.bench = bench
        self.model = model

    @property
    def tag(self) -> str:
        return str(self.bench.get("tag") or self.bench.get("name"))

    @abstractmethod
    def prepare(self, cache_dir: Path, log: Log = print) -> Task:
        """Load or build everything the task needs (models may be trained and cached here)."""

    def prepare_shared(self, cache_dir: Path, log: Log = print) -> None:
        """Build (or find cached) what every world and split of this benchmark shares, and nothing else.

        Why: a grid that builds several worlds' models at once (`experiments.grid.prepare_models`) builds the
        shared part first, once, with every thread; otherwise each parallel build would wait on the same
        cache-entry lock while one single-threaded worker builds it. `prepare` must still work without it.
        Default: nothing is shared.
        """
        return None


class SharedEmbeddedBase:
    """`prepare_shared` for the embedded benchmarks built with the pretrain-then-fine-tune recipe: their shared
    part is the pretrained base (`unlearn.models.pretrain.prepare_base`) with the settings the subclass resolved
    into `corpus`, `arch` and `pretrain` (the same arguments `prepare` passes on, so it is the same cache entry)."""

    corpus: dict[str, dict[str, Any]]
    arch: dict[str, Any]
    pretrain: dict[str, Any]

    def prepare_shared(self, cache_dir: Path, log: Log = print) -> None:
        from unlearn.models.pretrain import prepare_base  # lazy, as in every benchmark's prepare

        prepare_base(self.corpus, self.arch, self.pretrain, Path(cache_dir), log)


BENCHMARKS: Registry[Benchmark] = Registry("benchmark", "benchmark.name")


# ---------------------------------------------------------------------------------------------------- config helpers
def to_plain(cfg: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (resolved), anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def section(cfg: Any, key: str) -> dict[str, Any]:
    """A config mapping as a plain dict ({} for null); anything else is a ConfigError naming `key`."""
    cfg = to_plain(cfg)
    if cfg is None:
        return {}
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def check_keys(cfg: Mapping[str, Any], allowed: Iterable[str], key: str) -> None:
    """Unknown keys are a ConfigError listing the known ones (a typo must not be silently ignored)."""
    allowed = set(allowed)
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; known: {sorted(allowed)}")


# Keys of the benchmark section owned by other layers (the recommended unlearning settings, the evaluators'
# generation limits, the sweep metric, the run tag): accepted here without being used.
SHARED_BENCH_KEYS = frozenset({"name", "tag", "train", "max_new_tokens", "optimize_metric"})
# Keys of the model section every model source has (dtype and trust_remote_code are used when it is loaded;
# trainable, unlearn.models.trainable, before the backend wraps it).
SHARED_MODEL_KEYS = frozenset({"name", "source", "prompt", "dtype", "trust_remote_code", "lora", "trainable"})

PROMPT_DEFAULTS: dict[str, Any] = {
    "template": DEFAULT_TEMPLATE,
    "use_chat_template": False,
    "system_prompt": None,
    "date_string": None,
    "max_length": 512,
}


def resolve_prompt(model: Mapping[str, Any]) -> dict[str, Any]:
    """`model.prompt` with defaults filled in, validated."""
    prompt = section(model.get("prompt"), "model.prompt")
    check_keys(prompt, PROMPT_DEFAULTS, "model.prompt")
    out = {**PROMPT_DEFAULTS, **prompt}
    if not isinstance(out["template"], str) or "{question}" not in out["template"]:
        raise ConfigError(f"model.prompt.template: must be a string containing '{{question}}', got {out['template']!r}")
    if not isinstance(out["use_chat_template"], bool):
        raise ConfigError(f"model.prompt.use_chat_template: expected true/false, got {out['use_chat_template']!r}")
    for key in ("system_prompt", "date_string"):
        if out[key] is not None and not isinstance(out[key], str):
            raise ConfigError(f"model.prompt.{key}: expected a string or null, got {out[key]!r}")
    if isinstance(out["max_length"], bool) or not isinstance(out["max_length"], int) or out["max_length"] < 2:
        raise ConfigError(f"model.prompt.max_length: expected an integer >= 2, got {out['max_length']!r}")
    return out


def make_formatter(tokenizer: Any, prompt: Mapping[str, Any]) -> QAFormatter:
    """The QA formatter a resolved `model.prompt` describes."""
    return QAFormatter(
        tokenizer,
        template=prompt["template"],
        max_length=prompt["max_length"],
        use_chat_template=prompt["use_chat_template"],
        system_prompt=prompt["system_prompt"],
        date_string=prompt["date_string"],
    )


def check_model_common(model: Mapping[str, Any]) -> None:
    """Validate the model keys every source shares (their meaning belongs to other layers)."""
    from unlearn.models.build import resolve_dtype

    resolve_dtype(model.get("dtype", "float32"))
    trust = model.get("trust_remote_code", False)
    if not isinstance(trust, bool):
        raise ConfigError(f"model.trust_remote_code: expected true/false, got {trust!r}")


def require_source(model: Mapping[str, Any], want: str, bench_name: str) -> None:
    source = model.get("source", want)
    if source != want:
        raise ConfigError(f"model.source: {source!r}, but benchmark {bench_name!r} needs model.source: {want}")


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (what an evaluation reads besides the model)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------- entry point
def build_benchmark(bench_cfg: Any, model_cfg: Any) -> Benchmark:
    """Validate the `benchmark` and `model` sections and return the benchmark object (nothing loaded yet)."""
    import unlearn.benchmarks  # noqa: F401  (registers every benchmark)

    bench = section(bench_cfg, "benchmark")
    model = section(model_cfg, "model")
    name = bench.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"benchmark.name: expected a benchmark name, got {name!r}; known: {BENCHMARKS.names()}")
    factory = BENCHMARKS.get(name)
    return factory(bench, model)


def prepare_benchmark(bench_cfg: Any, model_cfg: Any, cache_dir: str | Path, log: Log = print) -> Task:
    """Validate, then prepare the benchmark named by `bench_cfg["name"]` with the model `model_cfg` describes."""
    return build_benchmark(bench_cfg, model_cfg).prepare(Path(cache_dir), log)
