"""MUSE (Shi et al., 2024): the hub benchmarks (MUSE-News, MUSE-Books), the embedded `muse_mini`, the MUSE evaluator."""

from unlearn.benchmarks.muse import benchmark as _benchmark  # noqa: F401  (registers muse, muse_mini)
from unlearn.benchmarks.muse import evaluator as _evaluator  # noqa: F401  (registers the muse evaluator)
from unlearn.benchmarks.muse import general as _general  # noqa: F401  (registers the news corpus section)
