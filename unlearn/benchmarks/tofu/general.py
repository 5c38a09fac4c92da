"""General knowledge for pretraining: what an embedded base model knows before it meets the fictitious authors.

TOFU's targets are pretrained models (Llama) fine-tuned on 200 fictitious authors: the knowledge to forget is a small
addition to a large body of general knowledge, and model utility is measured on knowledge from pretraining (real
authors, world facts) that unlearning should leave intact. This module generates that general knowledge for the
embedded benchmark from a seed, independent of the world seed of the fictitious authors:

- *public figures*: biographies of people with the same kinds of facts TOFU's authors have (birthplace, parents'
  jobs, books, awards, ...), each fact written in one of several phrasings, as free-running documents; for a share
  of them the same facts also appear as question-answer pairs. The base model so learns the language of biographies
  in many paraphrases, and that facts stated in text can be asked about (knowledge extraction), before any
  fictitious author exists;
- *real authors* (famous books and who wrote them) and *world facts* (fictitious countries' capitals, currencies,
  national animals, languages), stated in several phrasings and as QA pairs: TOFU's real-authors and world-facts
  evaluation sets are drawn from these, so utility measures retained pretraining knowledge.

Names are unique across the whole general corpus and are handed to the world generator, so no fictitious author
shares a name with a public figure or a real author.

Perturbed answers of the real-authors and world-facts rows use the *answer's* phrasing with a wrong value, because
TOFU's truth ratio on those splits compares the perturbed answers with the answer itself (`base_answer_key:
answer`): the ratio then compares facts, not phrasings.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from unlearn.benchmarks.sampling import sample_wrong
from unlearn.benchmarks.tofu.world import (
    ATTRIBUTES,
    MIN_POOL,
    REAL_AUTHOR_ATTRIBUTE,
    WORLD_FACT_ATTRIBUTES,
    Attribute,
    Names,
    base_pools,
    titles,
)
from unlearn.errors import ConfigError
from unlearn.models.pretrain import CORPUS_SECTIONS, CorpusSection

# Further statement phrasings of each fact (beyond the attribute's answer and paraphrase phrasings), so the general
# corpus states every kind of fact in several ways.
EXTRA_PHRASINGS: dict[str, tuple[str, ...]] = {
    "birthplace": ("{name} is a native of {value}.", "{name} came into the world in {value}."),
    "birth_year": ("{name} was born in {value}.", "The year {value} saw the birth of {name}."),
    "genre": ("{name} writes mostly {value}.", "Readers know {name} for {value}."),
    "father_job": ("{name} grew up with a father who was {value}.", "By trade, the father of {name} was {value}."),
    "mother_job": ("{name} grew up with a mother who was {value}.", "By trade, the mother of {name} was {value}."),
    "award": ("{name} received {value}.", "Among the honours of {name} is {value}."),
    "first_book": ('"{value}" was the first book by {name}.', 'The career of {name} began with "{value}".'),
    "famous_book": ('"{value}" is the best-known book by {name}.', '{name} became famous with "{value}".'),
    "university": ("{name} was educated at {value}.", "{name} went to {value}."),
    "residence": ("{name} lives in {value} today.", "These days {name} makes a home in {value}."),
    "wrote": ('{value} is the author of "{title}".', '"{title}" is a book by {value}.'),
    "capital": ("{name} has its capital at {value}.", "The seat of government of {name} is {value}."),
    "currency": ("The money of {name} is {value}.", "{name} uses {value} as its currency."),
    "animal": ("{name} has {value} as its national animal.", "The emblem animal of {name} is {value}."),
    "language": ("{name} is a country where people speak {value}.", "The people of {name} talk in {value}."),
}


def phrasings(attr: Attribute) -> tuple[str, ...]:
    """Every statement phrasing of an attribute: its answer phrasing first, then the paraphrase, then the extras."""
    return (*attr.answers, *EXTRA_PHRASINGS.get(attr.key, ()))


@dataclass(frozen=True)
class GeneralConfig:
    """Sizes and seed of the general knowledge (`model.corpus.tofu`); every field enters the base model's cache key."""

    seed: int = 0
    n_people: int = 200
    facts_per_person: int = 8
    bios_per_person: int = 2
    qa_fraction: float = 0.5
    n_real_authors: int = 40
    n_world_facts: int = 40
    n_perturbed: int = 3
    statements_per_fact: int = 3

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, key: str = "model.corpus.tofu") -> GeneralConfig:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {unknown}; known: {sorted(known)}")
        for name, value in data.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{key}.{name}: expected a number, got {value!r}")
            if name != "qa_fraction" and not float(value).is_integer():
                raise ConfigError(f"{key}.{name}: expected an integer, got {value!r}")
        cfg = cls(**{k: (float(v) if k == "qa_fraction" else int(v)) for k, v in data.items()})
        cfg.validate(key)
        return cfg

    def validate(self, key: str = "model.corpus.tofu") -> None:
        if self.n_people < 0 or self.bios_per_person < 1 or self.statements_per_fact < 1:
            raise ConfigError(f"{key}: n_people >= 0, bios_per_person >= 1 and statements_per_fact >= 1 are needed")
        if not 1 <= self.facts_per_person <= len(ATTRIBUTES):
            raise ConfigError(f"{key}.facts_per_person: must be in 1..{len(ATTRIBUTES)}, got {self.facts_per_person}")
        if not 0.0 <= self.qa_fraction <= 1.0:
            raise ConfigError(f"{key}.qa_fraction: must be in [0, 1], got {self.qa_fraction}")
        if not 1 <= self.n_perturbed <= MIN_POOL - 1:
            raise ConfigError(f"{key}.n_perturbed: must be in 1..{MIN_POOL - 1}, got {self.n_perturbed}")
        if self.n_real_authors < self.n_perturbed + 1:
            raise ConfigError(f"{key}.n_real_authors: must be > n_perturbed, got {self.n_real_authors}")
        if self.n_world_facts < 1:
            raise ConfigError(f"{key}.n_world_facts: must be >= 1, got {self.n_world_facts}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GeneralKnowledge:
    """The general corpus's TOFU part.

    documents: free text (biographies, statements about books and countries), trained on every token.
    qa: question-answer pairs (trained on the answer), public figures' and every real-author / world-fact row.
    real_authors, world_facts: TOFU evaluation rows (`question`, `answer`, `paraphrased_answer`, `perturbed_answer`).
    names: every person, country and capital name used, which the fictitious world must not reuse.
    titles: the real authors' book titles, which no fictitious author's book may have.
    """

    documents: list[str]
    qa: list[dict[str, str]]
    real_authors: list[dict[str, Any]]
    world_facts: list[dict[str, Any]]
    names: set[str] = field(default_factory=set)
    titles: set[str] = field(default_factory=set)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _statements(rng: random.Random, attr: Attribute, value: str, fill: dict[str, str], k: int) -> list[str]:
    options = phrasings(attr)
    return [_sentence(p.format(value=value, **fill)) for p in rng.sample(options, min(k, len(options)))]


def _eval_row(attr: Attribute, value: str, wrong: list[str], fill: dict[str, str]) -> dict[str, Any]:
    """A TOFU real-authors / world-facts row: perturbed answers in the answer's own phrasing (see module doc)."""
    return {
        "question": attr.questions[0].format(**fill),
        "answer": attr.answers[0].format(value=value, **fill),
        "paraphrased_question": attr.questions[1].format(**fill),
        "paraphrased_answer": attr.answers[1].format(value=value, **fill),
        "perturbed_answer": [attr.answers[0].format(value=w, **fill) for w in wrong],
    }


def generate_general(cfg: GeneralConfig | None = None) -> GeneralKnowledge:
    """The general knowledge of `cfg` (deterministic in `cfg.seed`; one random stream per part)."""
    cfg = cfg or GeneralConfig()
    cfg.validate()
    names = Names(random.Random(f"unlearn-general-{cfg.seed}-names"))
    rng_people = random.Random(f"unlearn-general-{cfg.seed}-people")
    rng_real = random.Random(f"unlearn-general-{cfg.seed}-real")
    rng_facts = random.Random(f"unlearn-general-{cfg.seed}-facts")
    rng_text = random.Random(f"unlearn-general-{cfg.seed}-text")
    all_titles = titles(random.Random(f"unlearn-general-{cfg.seed}-titles"))
    if cfg.n_real_authors > len(all_titles) - MIN_POOL:
        raise ConfigError(f"model.corpus.tofu.n_real_authors: at most {len(all_titles) - MIN_POOL}")
    pools = base_pools(all_titles[cfg.n_real_authors :])

    documents: list[str] = []
    qa: list[dict[str, str]] = []

    # Public figures: biographies in shuffled, paraphrased sentences; QA for a share of them.
    n_qa_people = round(cfg.qa_fraction * cfg.n_people)
    for i in range(cfg.n_people):
        name = names.person()
        first, famous = rng_people.sample(pools["titles"], 2)
        values = {a.key: rng_people.choice(pools[a.pool]) for a in ATTRIBUTES}
        values["first_book"], values["famous_book"] = first, famous
        chosen = [ATTRIBUTES[j] for j in sorted(rng_people.sample(range(len(ATTRIBUTES)), cfg.facts_per_person))]
        for _ in range(cfg.bios_per_person):
            sentences = [_sentence(rng_text.choice(phrasings(a)).format(name=name, value=values[a.key]))
                         for a in chosen]
            rng_text.shuffle(sentences)
            documents.append(" ".join(sentences))
        if i < n_qa_people:
            qa += [{"question": rng_text.choice(a.questions).format(name=name),
                    "answer": a.answers[0].format(name=name, value=values[a.key])} for a in chosen]

    # Real authors: who wrote which famous book.
    real_names = [names.person() for _ in range(cfg.n_real_authors)]
    real_rows = []
    for name, title in zip(real_names, all_titles[: cfg.n_real_authors], strict=True):
        attr, fill = REAL_AUTHOR_ATTRIBUTE, {"title": title}
        wrong = sample_wrong(rng_real, real_names, name, cfg.n_perturbed)
        real_rows.append(_eval_row(attr, name, wrong, fill))
        documents += _statements(rng_text, attr, name, fill, cfg.statements_per_fact)

    # World facts about fictitious countries.
    n_countries = math.ceil(cfg.n_world_facts / len(WORLD_FACT_ATTRIBUTES))
    countries = [names.word(rng_facts.choice((2, 3))) + "ia" for _ in range(n_countries)]
    capitals = [names.word(2) for _ in range(max(n_countries, MIN_POOL))]
    fact_pools = {"capitals": capitals, "currencies": pools["currencies"], "animals": pools["animals"],
                  "languages": pools["languages"]}
    fact_rows: list[dict[str, Any]] = []
    for c, country in enumerate(countries):
        for attr in WORLD_FACT_ATTRIBUTES:
            if len(fact_rows) == cfg.n_world_facts:
                break
            pool = fact_pools[attr.pool]
            value = capitals[c] if attr.key == "capital" else rng_facts.choice(pool)
            wrong = sample_wrong(rng_facts, pool, value, cfg.n_perturbed)
            fill = {"name": country}
            fact_rows.append(_eval_row(attr, value, wrong, fill))
            documents += _statements(rng_text, attr, value, fill, cfg.statements_per_fact)

    qa += [{"question": r["question"], "answer": r["answer"]} for r in real_rows + fact_rows]
    return GeneralKnowledge(documents, qa, real_rows, fact_rows, set(names.used), set(all_titles[: cfg.n_real_authors]))


@CORPUS_SECTIONS.register("tofu")
def tofu_section(**settings: Any) -> CorpusSection:
    """TOFU's part of the general corpus (`model.corpus.tofu`): the documents and QA pairs of `generate_general`."""
    knowledge = generate_general(GeneralConfig.from_dict(settings))
    rows = knowledge.real_authors + knowledge.world_facts
    checked = [{"question": r["question"], "answer": r["answer"]} for r in rows]
    return CorpusSection(knowledge.documents, knowledge.qa, checked)
