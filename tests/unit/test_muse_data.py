"""MUSE loader on local fixtures in the hub's schema: what loads, and that bad input fails with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearn.benchmarks.muse.data import FORGET_SPLITS, load_muse, write_local
from unlearn.benchmarks.muse.world import NewsConfig, generate_news
from unlearn.errors import ConfigError, DataError

WORLD = NewsConfig(n_forget=8, n_folds=4, n_retain1=4, n_retain2=4, n_holdout=4, qa_per_article=2, n_icl=1)


@pytest.fixture()
def fixture_dir(tmp_path: Path) -> Path:
    """A small local copy in MUSE's layout: <dir>/<config>/<split>.jsonl."""
    for (config, split), rows in generate_news(WORLD).items():
        write_local(tmp_path, config, split, rows)
    return tmp_path


def test_loads_every_split(fixture_dir: Path) -> None:
    data = load_muse("news", "muse-bench/MUSE-News", data_dir=fixture_dir)
    assert len(data.forget_text) == 8 and len(data.retain_text) == 4
    assert len(data.verbmem) == 8 and set(data.verbmem[0]) == {"prompt", "gt"}
    assert len(data.forget_qa) == (8 - 1) * 2 and len(data.forget_qa_icl) == 1
    assert len(data.retain_qa) == (4 - 1) * 2 and len(data.retain_qa_icl) == 1
    assert len(data.privleak_forget) == 8 and len(data.privleak_holdout) == 4 and len(data.privleak_retain) == 4


def test_scal_and_sust_forget_sets(fixture_dir: Path) -> None:
    full = load_muse("news", "x", data_dir=fixture_dir).forget_text
    scal = [load_muse("news", "x", f"scal_{k}", fixture_dir).forget_text for k in range(1, 5)]
    sust = [load_muse("news", "x", f"sust_{k}", fixture_dir).forget_text for k in range(1, 5)]
    assert [len(s) for s in scal] == [2, 4, 6, 8] and scal[-1] == full  # nested
    assert [len(s) for s in sust] == [2, 2, 2, 2] and [t for s in sust for t in s] == full  # disjoint, covering forget
    with pytest.raises(ConfigError, match=r"benchmark\.forget_split"):
        load_muse("news", "x", "forget_5", fixture_dir)
    assert "forget" in FORGET_SPLITS


def test_json_array_files_load_too(fixture_dir: Path) -> None:
    path = fixture_dir / "knowmem" / "forget_qa_icl.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.unlink()
    (fixture_dir / "knowmem" / "forget_qa_icl.json").write_text(json.dumps(rows))
    assert load_muse("news", "x", data_dir=fixture_dir).forget_qa_icl == rows


def test_missing_file_names_it(fixture_dir: Path) -> None:
    (fixture_dir / "verbmem" / "forget.jsonl").unlink()
    with pytest.raises(DataError, match=r"verbmem/forget\.json: file not found"):
        load_muse("news", "x", data_dir=fixture_dir)


def test_missing_directory_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"benchmark\.data_dir"):
        load_muse("news", "x", data_dir=tmp_path / "absent")


@pytest.mark.parametrize(("row", "message"), [
    ({"question": "q?"}, r"row 1: missing key 'answer'"),
    ({"question": "q?", "answer": 7}, r"row 1: key 'answer' must be a string"),
    (["not", "an", "object"], r"row 1: expected a JSON object"),
])
def test_bad_rows_name_file_row_and_key(fixture_dir: Path, row: object, message: str) -> None:
    path = fixture_dir / "knowmem" / "forget_qa.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message) as err:
        load_muse("news", "x", data_dir=fixture_dir)
    assert "knowmem/forget_qa.jsonl" in str(err.value)


def test_invalid_json_names_the_line(fixture_dir: Path) -> None:
    path = fixture_dir / "raw" / "retain1.jsonl"
    path.write_text(path.read_text() + "{broken\n")
    with pytest.raises(DataError, match=r"retain1\.jsonl: invalid JSON on line 5"):
        load_muse("news", "x", data_dir=fixture_dir)


def test_empty_split_is_an_error(fixture_dir: Path) -> None:
    (fixture_dir / "privleak" / "holdout.jsonl").write_text("")
    with pytest.raises(DataError, match=r"privleak/holdout\.jsonl: no rows"):
        load_muse("news", "x", data_dir=fixture_dir)


def test_offline_hub_fails_with_one_line_naming_the_way_out() -> None:
    with pytest.raises(DataError) as err:
        load_muse("news", "muse-bench/MUSE-News")
    message = str(err.value)
    assert "\n" not in message
    assert "muse-bench/MUSE-News" in message and "benchmark.data_dir" in message
