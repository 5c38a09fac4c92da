"""The news section of the general corpus (`model.corpus.news`): background articles the base is pretrained on.

MUSE's target is a pretrained Llama fine-tuned on news: before it sees the articles to forget, it already knows
the language of news. The embedded base gets the same from background articles about other towns, written like the
benchmark's (unlearn.benchmarks.muse.world), fact boxes included, so fine-tuning adds facts, not a new language.
"""

from __future__ import annotations

from typing import Any

from unlearn.benchmarks.muse.world import background_articles
from unlearn.errors import ConfigError
from unlearn.models.pretrain import CORPUS_SECTIONS, CorpusSection

NEWS_DEFAULTS: dict[str, int] = {"seed": 0, "n_articles": 200, "qa_per_article": 3}


def resolve_news(settings: dict[str, Any] | None, key: str = "model.corpus.news") -> dict[str, int]:
    given = dict(settings or {})
    unknown = sorted(set(given) - set(NEWS_DEFAULTS))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; known: {sorted(NEWS_DEFAULTS)}")
    out = {**NEWS_DEFAULTS, **given}
    for name, value in out.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
            raise ConfigError(f"{key}.{name}: expected a positive integer, got {value!r}")
    return out


@CORPUS_SECTIONS.register("news")
def news_section(**settings: Any) -> CorpusSection:
    cfg = resolve_news(settings)
    articles, _ = background_articles(cfg["seed"], cfg["n_articles"], cfg["qa_per_article"])
    return CorpusSection(documents=[a.text for a in articles], qa=[])
