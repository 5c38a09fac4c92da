"""The world generators' shared draws (`unlearn.benchmarks.sampling`): the helpers do what the loops they replaced
did, and the worlds are bit-for-bit the ones generated before the helpers existed (digests pinned from that code,
commit 80c0a55: sha256 of the world as JSON with sorted keys)."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import pytest

from unlearn.benchmarks.sampling import draw_unique, sample_wrong, syllable_word
from unlearn.errors import ConfigError

PINNED = {
    "tofu/0": "2cbe05b554119e65351f0102333369dd8b68cfc2f52d467e06a7db0651778cdb",
    "tofu+general/0": "022954cf72ce6e615ae2e56fd716b9e2728a8b46f744a4d1c5e60490c40d2104",
    "muse/0": "8fa730d5db46d1542ad1f181bc21758bba497f32f010e6c29a84c59d06d2eef4",
    "wmdp/0": "c0465cd81f081d6ca4f6e8b2cab4bd4fa656aac9c4749fb275c007c497e514e8",
    "wmdp/1": "d55637e05113dabaf337fffbb4b1faeeb8feda7f562234e2ff3b0c3e2f2e76df",
    "wmdp/2": "87f604542aa5ec1b9773462a63c87f539188a131e95d6b1fe34f93dbc695de18",
}


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def test_syllable_word_draws_onset_vowel_coda_in_that_order() -> None:
    a, b = random.Random(3), random.Random(3)
    word = syllable_word(a, ["b", "k"], ["a", "o"], ["", "n"], 3)
    by_hand = "".join(b.choice(["b", "k"]) + b.choice(["a", "o"]) + b.choice(["", "n"]) for _ in range(3))
    assert word == by_hand.capitalize() and a.random() == b.random()  # same word, same rng state after


def test_draw_unique_skips_taken_and_rejected_values() -> None:
    values = iter(["ab", "x", "ab", "cd"])
    taken = {"ab"}
    assert draw_unique(lambda: next(values), taken, ok=lambda v: len(v) >= 2) == "cd"
    assert taken == {"ab", "cd"}
    with pytest.raises(ConfigError, match="pools are full"):
        draw_unique(lambda: "ab", taken, tries=5, error="pools are full")


def test_sample_wrong_never_returns_the_truth() -> None:
    rng = random.Random(0)
    for _ in range(50):
        wrong = sample_wrong(rng, list(range(6)), 2, 3)
        assert len(set(wrong)) == 3 and 2 not in wrong


def test_worlds_are_the_ones_generated_before_the_shared_helpers() -> None:
    from unlearn.benchmarks.muse.world import NewsConfig, generate_news
    from unlearn.benchmarks.tofu.general import GeneralConfig, generate_general
    from unlearn.benchmarks.tofu.world import WorldConfig, generate_world
    from unlearn.benchmarks.wmdp.world import WorldConfig as WmdpConfig
    from unlearn.benchmarks.wmdp.world import generate_world as generate_wmdp

    got = {
        "tofu/0": digest(generate_world(WorldConfig(seed=0))),
        "tofu+general/0": digest(generate_world(WorldConfig(seed=0), general=generate_general(GeneralConfig(seed=0)))),
        "muse/0": digest({"|".join(k): v for k, v in generate_news(NewsConfig(seed=0)).items()}),
        **{f"wmdp/{s}": digest(generate_wmdp(WmdpConfig(seed=s))) for s in (0, 1, 2)},
    }
    assert got == PINNED
