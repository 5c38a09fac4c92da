"""The synthetic news world: MUSE's splits, disjoint and unique, with questions answerable from their articles."""

from __future__ import annotations

import pytest

from unlearn.benchmarks.muse.world import NewsConfig, background_articles, generate_news
from unlearn.errors import ConfigError


def test_world_splits_and_questions() -> None:
    cfg = NewsConfig(n_forget=8, n_folds=4, n_retain1=6, n_retain2=5, n_holdout=7, qa_per_article=3, n_icl=2)
    world = generate_news(cfg)
    raw = {s: [r["text"] for r in world[("raw", s)]] for s in ("forget", "retain1", "retain2", "holdout")}
    assert {s: len(t) for s, t in raw.items()} == {"forget": 8, "retain1": 6, "retain2": 5, "holdout": 7}
    every = [t for texts in raw.values() for t in texts]
    assert len(set(every)) == len(every)  # no article twice
    # Each question's answer is written in its article's fact box, in the layout the KnowMem prompt continues.
    for name, split in (("forget", "forget"), ("retain", "retain2")):
        qa = world[("knowmem", f"{name}_qa")]
        assert len(qa) == (len(raw[split]) - cfg.n_icl) * 3
        for row in qa:
            assert sum(f"Question: {row['question']}\nAnswer:  {row['answer']}" in t for t in raw[split]) == 1
        icl = world[("knowmem", f"{name}_qa_icl")]
        assert len(icl) == cfg.n_icl and not {r["question"] for r in icl} & {r["question"] for r in qa}
    # VerbMem rows are forget articles cut in two; PrivLeak uses forget vs holdout articles.
    for row, text in zip(world[("verbmem", "forget")], raw["forget"], strict=True):
        assert row["prompt"] + row["gt"] == text and row["gt"].startswith(" ")
    assert [r["text"] for r in world[("privleak", "forget")]] == raw["forget"]
    assert [r["text"] for r in world[("privleak", "holdout")]] == raw["holdout"]


def test_world_is_deterministic_and_avoids_background_names() -> None:
    cfg = NewsConfig(n_forget=4, n_folds=2, n_retain1=2, n_retain2=3, n_holdout=2, n_icl=1)
    assert generate_news(cfg) == generate_news(cfg)
    articles, taken = background_articles(0, 30)
    assert len(articles) == 30 and taken
    world = generate_news(cfg, taken)
    towns = {t.split(" ")[0] for t in taken if " " not in t}
    for row in world[("raw", "forget")] + world[("raw", "holdout")]:
        assert not any(f" {town} " in f" {row['text']} " for town in towns)


@pytest.mark.parametrize(("key", "value"), [("n_forget", 7), ("n_icl", 99), ("qa_per_article", 9), ("n_folds", 0)])
def test_bad_world_settings_name_the_key(key: str, value: int) -> None:
    with pytest.raises(ConfigError, match=rf"benchmark\.world\.{key}"):
        NewsConfig.from_dict({key: value})


def test_unknown_world_key() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        NewsConfig.from_dict({"n_forgett": 3})
