"""Shared test setup: offline by construction, plus a micro `tofu_mini` benchmark built once per session.

The environment variables are set at import, before any test module imports `datasets`, `transformers` or
`wandb`, so no test can reach the network even by accident.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The test machine's cores are shared; OpenMP's default busy-waiting makes torch's intra-op threads spin
# against other processes and slowed small-model training up to 10x in measurements. Passive waiting keeps the
# thread count unchanged and removes that pathology. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path
from typing import Any

import pytest

from unlearn.benchmarks.tofu.embedded import micro_configs

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def micro_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide cache directory for embedded worlds/models (built once, reused by every test)."""
    return tmp_path_factory.mktemp("unlearn_cache")


@pytest.fixture(scope="session")
def micro_prepared(micro_cache_dir: Path) -> Any:
    """The micro tofu_mini benchmark (forget10), prepared once per session: a `Prepared`."""
    from unlearn.benchmarks.base import prepare_benchmark

    bench, model = micro_configs("forget10")
    return prepare_benchmark(bench, model, micro_cache_dir, log=lambda _msg: None)


@pytest.fixture(scope="session")
def tofu_fixture_dir() -> Path:
    """A tiny local copy of TOFU's configs in the real schema."""
    return FIXTURES / "tofu"
