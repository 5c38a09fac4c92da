"""The synthetic world: determinism, split structure, and the truth-ratio design of perturbed answers."""

from __future__ import annotations

import json
import re

import pytest

from unlearn.benchmarks.tofu.world import (
    ATTRIBUTES,
    REAL_AUTHOR_ATTRIBUTE,
    WORLD_FACT_ATTRIBUTES,
    WorldConfig,
    generate_world,
    pretraining_rows,
    retain_split_for,
    write_world,
)
from unlearn.errors import ConfigError

SMALL = WorldConfig(seed=3, n_authors=40, qa_per_author=5, n_holdout_authors=4, n_real_authors=8, n_world_facts=10)


@pytest.fixture(scope="module")
def world() -> dict[str, list[dict]]:
    return generate_world(SMALL)


def test_deterministic_in_seed(world: dict[str, list[dict]]) -> None:
    assert generate_world(SMALL) == world
    other = generate_world(WorldConfig(**{**SMALL.to_dict(), "seed": 4}))
    assert other["full"] != world["full"]


def test_default_sizes() -> None:
    w = generate_world(WorldConfig())
    assert len(w["full"]) == 100 * 10
    assert [len(w[s]) for s in ("forget01", "forget05", "forget10")] == [10, 50, 100]
    assert [len(w[s]) for s in ("holdout01", "holdout05", "holdout10")] == [10, 50, 100]
    assert 0 < len(w["retain_perturbed"]) <= 400
    tofu_sized = generate_world(WorldConfig(n_authors=200, n_holdout_authors=20))
    assert [len(tofu_sized[s]) for s in ("forget01", "forget05", "forget10")] == [20, 100, 200]


def test_forget_splits_nested_at_the_end_and_disjoint_from_retain(world: dict[str, list[dict]]) -> None:
    full_q = [r["question"] for r in world["full"]]
    previous: set[str] = set()
    for split in ("forget01", "forget05", "forget10"):
        forget = [r["question"] for r in world[split]]
        retain = [r["question"] for r in world[retain_split_for(split)]]
        assert forget == full_q[len(full_q) - len(forget) :], "forget split must be the last authors of full"
        assert previous <= set(forget), "forget splits must be nested"
        assert not set(forget) & set(retain)
        assert sorted(forget + retain) == sorted(full_q)
        forget_authors = {r["author_id"] for r in world[split]}
        retain_authors = {r["author_id"] for r in world[retain_split_for(split)]}
        assert not forget_authors & retain_authors, "an author is either forgotten or retained, never split"
        perturbed = world[f"{split}_perturbed"]
        assert [r["question"] for r in perturbed] == forget
        previous = set(forget)


def test_holdout_authors_are_never_trained_on(world: dict[str, list[dict]]) -> None:
    trained = {r["question"] for r in pretraining_rows(world, "target")}
    for split in ("holdout01", "holdout05", "holdout10"):
        assert world[split]
        assert not {r["question"] for r in world[split]} & trained


def test_retain_perturbed_inside_every_retain_split(world: dict[str, list[dict]]) -> None:
    questions = {r["question"] for r in world["retain_perturbed"]}
    for split in ("retain99", "retain95", "retain90"):
        assert questions <= {r["question"] for r in world[split]}


def _template_regex(template: str, fill: dict[str, str]) -> re.Pattern[str]:
    text = re.escape(template)
    for k, v in fill.items():
        text = text.replace(re.escape("{" + k + "}"), re.escape(v))
    return re.compile("^" + text.replace(re.escape("{value}"), "(?P<value>.+)") + "$")


@pytest.mark.parametrize(
    "config", ["forget10_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed"]
)
def test_perturbed_answers_use_the_paraphrase_template_with_a_wrong_value(
    world: dict[str, list[dict]], config: str
) -> None:
    attrs = (*ATTRIBUTES, REAL_AUTHOR_ATTRIBUTE, *WORLD_FACT_ATTRIBUTES)
    for row in world[config]:
        assert len(row["perturbed_answer"]) == SMALL.n_perturbed
        assert row["answer"] not in row["perturbed_answer"]
        assert row["paraphrased_answer"] != row["answer"], "paraphrase must be a different phrasing"
        assert len(set(row["perturbed_answer"])) == SMALL.n_perturbed
        # Find the attribute whose paraphrase template produced this row, then check every perturbed answer
        # has exactly that wording with a different value.
        matched = False
        for attr in attrs:
            for fill_key in ("name", "title"):
                subject = _subject(row["question"], attr.questions[0], fill_key)
                if subject is None:
                    continue
                pattern = _template_regex(attr.answers[1], {fill_key: subject})
                m = pattern.match(row["paraphrased_answer"])
                if not m:
                    continue
                matched = True
                for pert in row["perturbed_answer"]:
                    mp = pattern.match(pert)
                    assert mp, f"{pert!r} does not follow the paraphrase template {attr.answers[1]!r}"
                    assert mp["value"] != m["value"]
        assert matched, f"no template explains row {row}"


def _subject(question: str, template: str, key: str) -> str | None:
    if "{" + key + "}" not in template:
        return None
    prefix, suffix = template.split("{" + key + "}")
    if question.startswith(prefix) and question.endswith(suffix):
        return question[len(prefix) : len(question) - len(suffix)]
    return None


def test_pretraining_rows(world: dict[str, list[dict]]) -> None:
    target = pretraining_rows(world, "target")
    retain = pretraining_rows(world, "retain", "forget05")
    shared = len(world["real_authors"]) + len(world["world_facts"])
    assert len(target) == len(world["full"]) + shared
    assert len(retain) == len(world["retain95"]) + shared
    forget_q = {r["question"] for r in world["forget05"]}
    assert not forget_q & {r["question"] for r in retain}
    assert forget_q <= {r["question"] for r in target}
    assert all(set(r) == {"question", "answer"} for r in target)
    with pytest.raises(ConfigError):
        pretraining_rows(world, "retain")
    with pytest.raises(ConfigError, match="forget_split"):
        pretraining_rows(world, "retain", "forget07")


def test_write_world_jsonl(tmp_path, world: dict[str, list[dict]]) -> None:
    write_world(SMALL, tmp_path)
    for name, rows in world.items():
        lines = (tmp_path / f"{name}.json").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == rows


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match=r"benchmark\.world: unknown key"):
        WorldConfig.from_dict({"n_autors": 10})
    with pytest.raises(ConfigError, match=r"benchmark\.world\.qa_per_author"):
        WorldConfig.from_dict({"qa_per_author": 50})
    with pytest.raises(ConfigError, match=r"benchmark\.world\.n_authors"):
        WorldConfig.from_dict({"n_authors": "many"})
    with pytest.raises(ConfigError, match=r"n_holdout_authors"):
        WorldConfig.from_dict({"n_authors": 200, "n_holdout_authors": 5})
    assert WorldConfig.from_dict({"n_authors": 50, "n_holdout_authors": 5}).n_authors == 50
