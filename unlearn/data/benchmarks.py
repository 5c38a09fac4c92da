"""Benchmark preparation: config -> data, tokenizer, formatter and the paths of the target and retain models.

The unlearning run sees every TOFU-style benchmark through `Prepared`, whether its models come from the hub
(`tofu`) or are trained here from a synthetic world (`tofu_mini`). All config keys are validated before any
expensive work starts, and each error names the key a user has to change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearn.data.format import DEFAULT_TEMPLATE, QAFormatter
from unlearn.data.tofu import TofuData, load_tofu
from unlearn.data.world import FORGET_SPLITS, WorldConfig
from unlearn.errors import ConfigError
from unlearn.registry import Registry

Log = Callable[[str], None]


@dataclass
class Prepared:
    """What the unlearning loop and the evaluator need from a benchmark."""

    data: TofuData
    tokenizer: Any
    formatter: QAFormatter
    target_path: str
    retain_path: str | None
    kind: str = "tofu"


BenchmarkFactory = Callable[[dict[str, Any], dict[str, Any], Path, Log], Prepared]
BENCHMARKS: Registry[Prepared] = Registry("benchmark", "benchmark.name")

PROMPT_DEFAULTS: dict[str, Any] = {
    "template": DEFAULT_TEMPLATE,
    "use_chat_template": False,
    "system_prompt": None,
    "max_length": 512,
}


# ---------------------------------------------------------------------------------------------------- helpers
def to_plain(cfg: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (resolved), anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return cfg
    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _section(cfg: Any, key: str) -> dict[str, Any]:
    cfg = to_plain(cfg)
    if cfg is None:
        return {}
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {type(cfg).__name__}")
    return dict(cfg)


# Keys of the benchmark section owned by other layers (the experiment's recommended unlearning settings, the
# evaluator's generation limit): accepted here without being used, so one section describes a benchmark.
SHARED_BENCH_KEYS = frozenset({"name", "kind", "train", "max_new_tokens"})
# Keys of the model section every model source has (dtype and trust_remote_code are used when it is loaded).
SHARED_MODEL_KEYS = frozenset({"name", "source", "prompt", "dtype", "trust_remote_code", "lora"})


def _check_keys(cfg: dict[str, Any], allowed: set[str] | frozenset[str], key: str) -> None:
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; known: {sorted(allowed)}")


def _forget_split(bench: dict[str, Any]) -> str:
    split = bench.get("forget_split", "forget10")
    if split not in FORGET_SPLITS:
        raise ConfigError(f"benchmark.forget_split: {split!r} not one of {', '.join(FORGET_SPLITS)}")
    return split


def _prompt(model: dict[str, Any]) -> dict[str, Any]:
    prompt = _section(model.get("prompt"), "model.prompt")
    _check_keys(prompt, set(PROMPT_DEFAULTS), "model.prompt")
    out = {**PROMPT_DEFAULTS, **prompt}
    if not isinstance(out["template"], str) or "{question}" not in out["template"]:
        raise ConfigError(f"model.prompt.template: must be a string containing '{{question}}', got {out['template']!r}")
    if not isinstance(out["use_chat_template"], bool):
        raise ConfigError(f"model.prompt.use_chat_template: expected true/false, got {out['use_chat_template']!r}")
    if out["system_prompt"] is not None and not isinstance(out["system_prompt"], str):
        raise ConfigError(f"model.prompt.system_prompt: expected a string or null, got {out['system_prompt']!r}")
    if isinstance(out["max_length"], bool) or not isinstance(out["max_length"], int) or out["max_length"] < 2:
        raise ConfigError(f"model.prompt.max_length: expected an integer >= 2, got {out['max_length']!r}")
    return out


def _check_shared(bench: dict[str, Any], model: dict[str, Any]) -> None:
    """Validate the shared keys' values (their meaning belongs to other layers, their form is checked here)."""
    from unlearn.models.build import resolve_dtype

    kind = bench.get("kind", "tofu")
    if kind != "tofu":
        raise ConfigError(f"benchmark.kind: {kind!r}, but benchmark {bench.get('name')!r} is of kind 'tofu'")
    resolve_dtype(model.get("dtype", "float32"))
    trust = model.get("trust_remote_code", False)
    if not isinstance(trust, bool):
        raise ConfigError(f"model.trust_remote_code: expected true/false, got {trust!r}")


def _source(model: dict[str, Any], want: str, bench_name: str) -> None:
    source = model.get("source", want)
    if source != want:
        raise ConfigError(f"model.source: {source!r}, but benchmark {bench_name!r} needs model.source: {want}")


def prepare_benchmark(bench_cfg: Any, model_cfg: Any, cache_dir: str | Path, log: Log = print) -> Prepared:
    """Prepare the benchmark named by `bench_cfg["name"]` with the model described by `model_cfg`."""
    bench = _section(bench_cfg, "benchmark")
    model = _section(model_cfg, "model")
    name = bench.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"benchmark.name: expected a benchmark name, got {name!r}; known: {BENCHMARKS.names()}")
    factory = BENCHMARKS.get(name)
    return factory(bench, model, Path(cache_dir), log)


# ---------------------------------------------------------------------------------------------------- tofu_mini
@BENCHMARKS.register("tofu_mini")
def prepare_tofu_mini(bench: dict[str, Any], model: dict[str, Any], cache_dir: Path, log: Log = print) -> Prepared:
    """Synthetic world + embedded target/retain models, built or reused from `cache_dir`."""
    from unlearn.models.embedded import prepare_embedded, resolve_arch, resolve_train

    _check_keys(bench, SHARED_BENCH_KEYS | {"forget_split", "world"}, "benchmark")
    _check_keys(model, SHARED_MODEL_KEYS | {"arch", "pretrain"}, "model")
    _check_shared(bench, model)
    forget_split = _forget_split(bench)
    world_cfg = WorldConfig.from_dict(_section(bench.get("world"), "benchmark.world"))
    _source(model, "embedded", "tofu_mini")
    prompt = _prompt(model)
    if prompt["use_chat_template"]:
        raise ConfigError("model.prompt.use_chat_template: embedded models have no chat template; set it false")
    pretrain = _section(model.get("pretrain"), "model.pretrain")
    if "template" in pretrain and pretrain["template"] != prompt["template"]:
        raise ConfigError("model.pretrain.template: must equal model.prompt.template (or be left out)")
    pretrain["template"] = prompt["template"]  # the models are trained with the prompt they are scored with
    arch = resolve_arch(_section(model.get("arch"), "model.arch"))
    train = resolve_train(pretrain)

    built = prepare_embedded(world_cfg, arch, train, forget_split, cache_dir, log=log)
    from unlearn.data.tokenizer import load_trained_tokenizer

    tokenizer = load_trained_tokenizer(built.tokenizer_dir)
    formatter = QAFormatter(
        tokenizer, template=prompt["template"], max_length=prompt["max_length"], system_prompt=prompt["system_prompt"]
    )
    data = load_tofu(built.world_dir, forget_split)
    return Prepared(data, tokenizer, formatter, str(built.target_dir), str(built.retain_dir), "tofu")


# ---------------------------------------------------------------------------------------------------- tofu
@BENCHMARKS.register("tofu")
def prepare_tofu(bench: dict[str, Any], model: dict[str, Any], cache_dir: Path, log: Log = print) -> Prepared:
    """Real TOFU (hub id or local copy) with hub (or local) target and retain models."""
    from unlearn.models.build import load_tokenizer

    _check_keys(bench, SHARED_BENCH_KEYS | {"source", "forget_split"}, "benchmark")
    _check_keys(model, SHARED_MODEL_KEYS | {"path", "retain_path"}, "model")
    _check_shared(bench, model)
    forget_split = _forget_split(bench)
    source = bench.get("source", "locuslab/TOFU")
    if not isinstance(source, str) or not source:
        raise ConfigError(f"benchmark.source: expected a hub dataset id or a directory, got {source!r}")
    _source(model, "hub", "tofu")
    path = model.get("path")
    if not isinstance(path, str) or not path:
        raise ConfigError(f"model.path: expected a hub model id or a directory, got {path!r}")
    retain_path = model.get("retain_path")
    if retain_path is not None and (not isinstance(retain_path, str) or not retain_path):
        raise ConfigError(f"model.retain_path: expected a hub model id, a directory or null, got {retain_path!r}")
    trust = bool(model.get("trust_remote_code", False))
    prompt = _prompt(model)

    log(f"[tofu] loading {source} ({forget_split}) and tokenizer {path}")
    data = load_tofu(source, forget_split)
    tokenizer = load_tokenizer(path, trust_remote_code=trust)
    formatter = QAFormatter(
        tokenizer,
        template=prompt["template"],
        max_length=prompt["max_length"],
        use_chat_template=prompt["use_chat_template"],
        system_prompt=prompt["system_prompt"],
    )
    return Prepared(data, tokenizer, formatter, path, retain_path, "tofu")
