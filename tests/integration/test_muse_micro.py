"""muse_micro end to end: the build's regime, the shipped configs, and unlearning runs whose forget metrics move."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from tests.integration.helpers import CONFIG_DIR
from unlearn.benchmarks.base import Task, prepare_benchmark
from unlearn.benchmarks.muse.embedded import micro_configs
from unlearn.evals.base import read_items
from unlearn.models.cache import content_digest, read_info
from unlearn.pipeline import plan, run_experiment
from unlearn.report.resummarise import resummarise


def muse_cfg(cache_dir: Path, *overrides: str, benchmark: str = "muse_micro") -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[f"benchmark={benchmark}", f"cache_dir={cache_dir}", *overrides])


def test_micro_config_matches_the_preset(tmp_path: Path) -> None:
    cfg = OmegaConf.to_container(muse_cfg(tmp_path), resolve=True)
    bench, model = micro_configs()
    assert cfg["benchmark"]["world"] == bench["world"] and cfg["benchmark"]["max_length"] == bench["max_length"]
    for key in ("arch", "corpus", "pretrain", "finetune"):
        assert cfg["model"][key] == model[key], key
    assert set(cfg["eval"]) - {"every", "every_unit"} == {"muse"}


@pytest.mark.parametrize("benchmark", ["muse_news", "muse_books", "muse_mini"])
def test_shipped_muse_configs_plan(benchmark: str, tmp_path: Path) -> None:
    p = plan(muse_cfg(tmp_path, "method=blur_npo", benchmark=benchmark))
    cfg = p.cfg
    assert [ev.name for ev in p.evaluators] == ["muse"]
    if benchmark != "muse_mini":
        corpus = benchmark.split("_")[1]
        assert cfg["model"]["path"] == f"muse-bench/MUSE-{corpus}_target"
        assert cfg["model"]["retain_path"] == f"muse-bench/MUSE-{corpus}_retrain"
        assert cfg["trainer"]["batch_size"] == 32 and cfg["trainer"]["epochs"] == 10
        assert cfg["benchmark"]["max_length"] == 2048
        # BLUR paper Table 6: lr and NPO beta per corpus.
        lr, beta = (2.5e-5, 0.05) if corpus == "news" else (1e-5, 0.4)
        assert cfg["optimizer"]["lr"] == lr and cfg["method"]["forget"]["beta"] == beta
        assert cfg["eval"]["muse"]["verbmem_max_new_tokens"] == 128
        assert cfg["eval"]["muse"]["knowmem_max_new_tokens"] == 32


@pytest.fixture(scope="session")
def muse_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """muse_micro's own session cache: its base differs from tofu_micro's (other corpus), and tests of the TOFU
    build count the bases in theirs."""
    return tmp_path_factory.mktemp("muse_cache")


@pytest.fixture(scope="session")
def muse_task(muse_cache_dir: Path) -> Task:
    bench, model = micro_configs()
    return prepare_benchmark(bench, model, muse_cache_dir, log=lambda _m: None)


def test_retrained_model_never_saw_the_forget_articles(muse_task: Task) -> None:
    data = muse_task.eval_data["muse"]
    forget = {content_digest(t) for t in data.forget_text}
    target = set(read_info(Path(muse_task.models["target"]))["trained_texts"])
    retrain = set(read_info(Path(muse_task.models["retain"]))["trained_texts"])
    assert forget <= target and not forget & retrain
    assert retrain < target


@pytest.mark.parametrize("method", ["npo", "blur_npo"])
def test_unlearning_removes_verbatim_memory(method: str, muse_task: Task, muse_cache_dir: Path,
                                            tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    summary = run_experiment(muse_cfg(muse_cache_dir, f"method={method}"), run_dir, console_print=False)
    refs = json.loads((run_dir / "references.json").read_text())
    original, retrain = refs["Original"], refs["Retrain"]
    # The embedded regime: the target reproduces its forget articles and is recognised as having seen them.
    assert original["verbmem_f"] > retrain["verbmem_f"] + 5
    assert original["privleak"] < -50 and retrain["privleak"] == 0.0
    # Unlearning removes verbatim memory of the forget articles and makes them less recognisable.
    assert summary["verbmem_f"] < original["verbmem_f"] - 5, (summary, original)
    assert summary["privleak_auc"] > original["privleak_auc"]
    # The run directory: per-item files of the model and of both references, re-aggregating to the summary.
    for name in ("items/muse.jsonl", "items/target/muse.jsonl", "items/retain/muse.jsonl", "table.csv"):
        assert (run_dir / name).is_file(), name
    items = read_items(run_dir / "items" / "muse.jsonl")
    assert set(items["split"]) == {"verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak_forget",
                                   "privleak_holdout"}
    again = resummarise(run_dir)
    assert all(again[k] == summary[k] for k in again)


def test_start_from_must_be_a_saved_model(tmp_path: Path) -> None:
    from unlearn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"benchmark\.start_from"):
        plan(muse_cfg(tmp_path, f"benchmark.start_from={tmp_path}"))


@pytest.mark.slow
def test_sustainability_chains_requests(muse_task: Task, muse_cache_dir: Path, tmp_path: Path) -> None:
    """Each request starts from the previous request's unlearned model; the table has one row per request."""
    from experiments.muse_protocols import run_protocol

    table = run_protocol("sust", "muse_micro", "npo", tmp_path, [], [f"cache_dir={muse_cache_dir}",
                                                                      "trainer.max_steps=2"])
    assert list(table.index) == ["Original", "Retrain", *(f"npo request {k}" for k in range(1, 5))]
    for k in range(2, 5):
        cfg = (tmp_path / "sust" / f"npo_sust_{k}" / "config.yaml").read_text()
        assert f"start_from: {tmp_path / 'sust' / f'npo_sust_{k - 1}' / 'model'}" in cfg
    # Unlearning requests add up: after all four the forget articles are reproduced less than after the first.
    assert table.loc["npo request 4", "verbmem_f"] < table.loc["npo request 1", "verbmem_f"]


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(p.stem for p in (Path(CONFIG_DIR) / "method").glob("*.yaml")))
def test_every_method_config_runs(method: str, muse_task: Task, muse_cache_dir: Path, tmp_path: Path) -> None:
    summary = run_experiment(muse_cfg(muse_cache_dir, f"method={method}", "trainer.max_steps=2",
                                      "eval_reference_models=false"), tmp_path / "run", console_print=False)
    assert summary["steps"] == 2 and 0.0 <= summary["verbmem_f"] <= 100.0


def test_real_muse_benchmark_on_a_local_copy(muse_task: Task, muse_cache_dir: Path) -> None:
    """`benchmark=muse_news` with `data_dir` and local model directories: the hub code path without the hub."""
    from unlearn.benchmarks.muse.data import local_path

    world_dir = next(p for p in (muse_cache_dir / "worlds").iterdir()
                     if p.name.startswith("muse-") and local_path(p, "raw", "forget"))
    cfg = OmegaConf.to_container(muse_cfg(muse_cache_dir, f"benchmark.data_dir={world_dir}",
                                          f"model.path={muse_task.models['target']}",
                                          f"model.retain_path={muse_task.models['retain']}",
                                          f"model.tokenizer={muse_task.models['target']}", "model.dtype=float32",
                                          "benchmark.max_length=64", benchmark="muse_news"), resolve=True)
    task = prepare_benchmark(cfg["benchmark"], cfg["model"], muse_cache_dir, log=lambda _m: None)
    assert task.tag == "news-forget" and task.role_names == {"target": "Original", "retain": "Retrain"}
    # MUSE's chunking: the whole forget text joined, cut into 64-token chunks with bos first.
    assert all(len(e["input_ids"]) <= 64 and e["input_ids"][0] == task.tokenizer.bos_token_id for e in task.forget)
    assert sum(len(e["input_ids"]) == 64 for e in task.forget) == len(task.forget) - 1
    assert task.eval_data["muse"].verbmem == muse_task.eval_data["muse"].verbmem
