"""Seeded draws the synthetic world generators share (tofu, its general corpus, muse, wmdp).

Each generator makes names and values by drawing from small pools until it gets one it has not used, and picks a
question's wrong choices from the same pool as the right one. One implementation keeps the draws identical across
worlds: the call sequence on the `random.Random` is part of every world's output (and so of the cache keys' meaning:
same seed, same world), which is why these helpers only wrap the loops and never reorder a draw.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

from unlearn.errors import ConfigError

T = TypeVar("T")


def draw_unique(make: Callable[[], str], taken: set[str], ok: Callable[[str], bool] | None = None,
                tries: int | None = None, error: str = "") -> str:
    """Call `make()` until it returns a string that is not in `taken` (and passes `ok`); add it and return it.

    `tries`: give up after that many draws with a ConfigError saying `error` (a world too large for its pools);
    None draws until it succeeds (pools large enough that it always does).
    """
    n = 0
    while tries is None or n < tries:
        n += 1
        value = make()
        if (ok is None or ok(value)) and value not in taken:
            taken.add(value)
            return value
    raise ConfigError(error or f"no unused value after {tries} draws")


def syllable_word(rng: random.Random, onsets: Sequence[str], vowels: Sequence[str], codas: Sequence[str],
                  n_syllables: int) -> str:
    """A capitalised made-up word of `n_syllables` onset+vowel+coda syllables (three draws each, in that order)."""
    return "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(n_syllables)).capitalize()


def sample_wrong(rng: random.Random, pool: Sequence[T], truth: T, n: int) -> list[T]:
    """`n` distinct values of `pool` other than `truth` (a multiple-choice question's wrong answers)."""
    return rng.sample([v for v in pool if v != truth], n)


__all__ = ["draw_unique", "sample_wrong", "syllable_word"]
