"""load_tofu on the real-schema fixture, and every DataError it promises."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from unlearn.benchmarks.tofu.data import TofuData, load_tofu, tofu_configs
from unlearn.errors import ConfigError, DataError


def test_loads_fixture(tofu_fixture_dir: Path) -> None:
    data = load_tofu(tofu_fixture_dir, "forget05")
    assert isinstance(data, TofuData)
    assert data.name == "forget05"
    assert len(data.forget) == 4 and len(data.retain) == 8
    assert len(data.retain_eval) == 5 and len(data.real_authors) == 5 and len(data.world_facts) == 5
    assert len(data.holdout) == 2
    for rows in (data.forget, data.retain_eval, data.real_authors, data.world_facts):
        for row in rows:
            assert isinstance(row["paraphrased_answer"], str)
            assert row["perturbed_answer"] and all(isinstance(p, str) for p in row["perturbed_answer"])
    assert len(data.forget[0]["perturbed_answer"]) == 5
    # real_authors_perturbed has no paraphrased_answer in the fixture: TOFU scores it against `answer`.
    assert all(r["paraphrased_answer"] == r["answer"] for r in data.real_authors)
    assert "option1" in data.real_authors[0], "extra keys are kept"


def test_retain_split_matches_forget_split(tofu_fixture_dir: Path) -> None:
    assert tofu_configs("forget01")["retain"] == "retain99"
    full = load_tofu(tofu_fixture_dir, "forget10")
    small = load_tofu(tofu_fixture_dir, "forget01")
    assert len(small.retain) == 10 and len(full.retain) == 6
    assert not {r["question"] for r in full.forget} & {r["question"] for r in full.retain}


def test_bad_split_is_config_error(tofu_fixture_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"benchmark\.forget_split: 'forget07' not one of forget01"):
        load_tofu(tofu_fixture_dir, "forget07")


def test_jsonl_extension_and_missing_holdout(tofu_fixture_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(tofu_fixture_dir, tmp_path, dirs_exist_ok=True)
    (tmp_path / "retain90.json").rename(tmp_path / "retain90.jsonl")
    (tmp_path / "holdout10.json").unlink()
    data = load_tofu(tmp_path, "forget10")
    assert len(data.retain) == 6
    assert data.holdout == []


@pytest.fixture
def copy(tofu_fixture_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(tofu_fixture_dir, tmp_path, dirs_exist_ok=True)
    return tmp_path


def _rewrite(path: Path, index: int, change: dict, drop: str | None = None) -> None:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    rows[index].update(change)
    if drop:
        del rows[index][drop]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_missing_file_names_the_file(copy: Path) -> None:
    (copy / "retain_perturbed.json").unlink()
    with pytest.raises(DataError, match=r"retain_perturbed\.json: file not found"):
        load_tofu(copy, "forget10")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_tofu(tmp_path / "nope", "forget10")


def test_missing_key_names_file_row_and_key(copy: Path) -> None:
    _rewrite(copy / "forget10_perturbed.json", 3, {}, drop="paraphrased_answer")
    with pytest.raises(DataError, match=r"forget10_perturbed\.json: row 3: missing key 'paraphrased_answer'"):
        load_tofu(copy, "forget10")


def test_missing_key_in_first_row(copy: Path) -> None:
    _rewrite(copy / "retain90.json", 0, {}, drop="answer")
    with pytest.raises(DataError, match=r"retain90\.json: row 0: missing key 'answer'"):
        load_tofu(copy, "forget10")


def test_wrong_type_names_file_row_and_key(copy: Path) -> None:
    _rewrite(copy / "retain90.json", 2, {"answer": 42})
    with pytest.raises(DataError, match=r"retain90\.json: row 2: key 'answer' must be a string"):
        load_tofu(copy, "forget10")


def test_wrong_perturbed_type(copy: Path) -> None:
    _rewrite(copy / "world_facts_perturbed.json", 1, {"perturbed_answer": [1, 2]})
    with pytest.raises(DataError, match=r"world_facts_perturbed\.json: row 1: key 'perturbed_answer'"):
        load_tofu(copy, "forget10")


def test_invalid_json_names_the_file(copy: Path) -> None:
    path = copy / "real_authors_perturbed.json"
    path.write_text(path.read_text(encoding="utf-8") + '{"question": "broken", \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"real_authors_perturbed\.json: invalid JSON"):
        load_tofu(copy, "forget10")


def test_loads_a_written_world(tmp_path: Path) -> None:
    from unlearn.benchmarks.tofu.world import WorldConfig, generate_world, write_world

    cfg = WorldConfig(n_authors=20, qa_per_author=3, n_holdout_authors=2, n_real_authors=5, n_world_facts=5)
    write_world(cfg, tmp_path)
    world = generate_world(cfg)
    data = load_tofu(tmp_path, "forget10")
    assert data.forget == world["forget10_perturbed"]
    assert data.retain == world["retain90"]
    assert data.holdout == world["holdout10"]
