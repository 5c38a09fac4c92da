"""A seeded synthetic news world for `muse_mini`: articles about events in fictitious towns, and MUSE's splits of them.

MUSE's point is that the target model was trained on a corpus (news articles) and must forget part of it verbatim
(VerbMem), as knowledge (KnowMem) and as membership (PrivLeak), while keeping what it knows of the rest. A world
generated from a seed keeps that at a size a CPU can memorise, in the same configs, splits and schema as
`muse-bench/MUSE-News` (unlearn.benchmarks.muse.data), so the same loader and evaluator run on both.

Each article reports one event (a council plan, an opening, a festival, ...) with its town, the person who led it,
an organisation, a number, a cost and a month, in a few sentences chosen from several phrasings, and ends with a
"Key facts" box of questions and answers about it. The box is how the embedded target learns the facts as
something it can be asked about: a model of a million parameters does not extract knowledge from prose the way
a 7B model does (MUSE's KnowMem relies on that), but it does learn a question-answer block in its training text.
The box writes two spaces after `Answer:`, so that a byte-level tokenizer splits the text exactly as MUSE's
KnowMem prompt (which ends in `"Answer: "`) is continued: `Answer`, `:`, ` `, ` Paris`.

Splits (sizes in `NewsConfig`): `forget` (in `n_folds` folds: `scal/forget_k` are folds 1..k, `sust/forget_k`
fold k), `retain1` (the retain loss's data), `retain2` (seen by the target, asked about in KnowMem_r) and `holdout`
(never trained on: PrivLeak's non-members). Towns, people and organisations are unique per article, so every
question has one answer. `background_articles` makes the general corpus section (`model.corpus.news`) the base
model is pretrained on: the same kind of articles about other towns, so the base knows the language of news and
the fact box before it sees a single benchmark article.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields
from typing import Any

from unlearn.benchmarks.sampling import draw_unique
from unlearn.errors import ConfigError

SYLLABLES = ("bar", "ton", "mel", "ford", "ash", "by", "wick", "ley", "dun", "mor", "ca", "stow", "ham", "ril",
             "ven", "tor", "lin", "gate", "pen", "rose", "kirk", "wel", "nor", "sal", "den", "bro", "fen", "dal")
FIRST = ("Anna", "Ben", "Clara", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "James", "Kira", "Liam",
         "Maya", "Noah", "Olga", "Pavel", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wen", "Yusuf", "Zoe")
LAST = ("Abbott", "Brennan", "Castell", "Doyle", "Ellison", "Faulk", "Garrow", "Hadley", "Iqbal", "Jarvis",
        "Keane", "Lowther", "Marsh", "Nolan", "Okafor", "Pryce", "Quill", "Rowe", "Sato", "Thorne", "Varga",
        "Webb", "Yates", "Zeller")
ROLES = ("council leader", "mayor", "head teacher", "hospital director", "club chairman", "police chief")
ORGS = ("Trust", "Society", "Foundation", "Board", "Council", "Alliance", "Union", "Group")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
EVENTS = (
    ("build", "new homes"), ("open", "new schools"), ("repair", "old bridges"), ("plant", "trees"),
    ("close", "libraries"), ("hire", "nurses"), ("buy", "electric buses"), ("restore", "churches"),
)

OPENINGS = (
    "{role_cap} {person} announced that {town} will {verb} {number} {things}.",
    "{town} will {verb} {number} {things}, {role} {person} said on Monday.",
    "Plans to {verb} {number} {things} in {town} were unveiled by {role} {person}.",
)
MIDDLES = (
    "The work is backed by the {org} and is expected to cost {cost} pounds.",
    "The {org} has agreed to fund the project, which will cost {cost} pounds.",
    "A budget of {cost} pounds has been set aside, with support from the {org}.",
)
ENDINGS = (
    "Work should begin in {month}, and residents have been invited to a public meeting.",
    "{person} said the first stage would start in {month} if the weather allowed.",
    "Local people will be able to comment on the plans before work starts in {month}.",
)
QUESTIONS = (
    ("Who announced the plan to {verb} {things} in {town}?", "{person}"),
    ("How many {things} will {town} {verb}?", "{number}"),
    ("Which organisation backs the plan in {town}?", "the {org}"),
    ("How much will the plan in {town} cost?", "{cost} pounds"),
    ("In which month will the work in {town} begin?", "{month}"),
)


@dataclass(frozen=True)
class NewsConfig:
    """Sizes and seed of a news world (`benchmark.world`); every field enters the cache keys."""

    seed: int = 0
    n_forget: int = 40
    n_folds: int = 4
    n_retain1: int = 40
    n_retain2: int = 20
    n_holdout: int = 40
    qa_per_article: int = 3
    n_icl: int = 3
    verbmem_prompt_fraction: float = 0.35

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, key: str = "benchmark.world") -> NewsConfig:
        data = dict(data or {})
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {unknown}; known: {sorted(known)}")
        for name, value in data.items():
            want = float if name == "verbmem_prompt_fraction" else int
            if isinstance(value, bool) or not isinstance(value, int | float) or (want is int
                                                                                  and not isinstance(value, int)):
                raise ConfigError(f"{key}.{name}: expected {want.__name__}, got {value!r}")
        cfg = cls(**data)
        cfg.validate(key)
        return cfg

    def validate(self, key: str = "benchmark.world") -> None:
        for name in ("n_forget", "n_folds", "n_retain1", "n_retain2", "n_holdout", "qa_per_article"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.n_forget % self.n_folds:
            raise ConfigError(f"{key}.n_forget: {self.n_forget} not divisible by n_folds={self.n_folds}")
        if self.qa_per_article > len(QUESTIONS):
            raise ConfigError(f"{key}.qa_per_article: at most {len(QUESTIONS)}, got {self.qa_per_article}")
        if not 0 <= self.n_icl < min(self.n_forget, self.n_retain2):
            raise ConfigError(f"{key}.n_icl: must be in [0, min(n_forget, n_retain2)), got {self.n_icl}")
        if not 0.1 <= self.verbmem_prompt_fraction <= 0.9:
            raise ConfigError(f"{key}.verbmem_prompt_fraction: must be in [0.1, 0.9], got "
                              f"{self.verbmem_prompt_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Article:
    text: str  # prose, then the fact box
    prose: str
    qa: list[dict[str, str]]


class _Names:
    """Unique town, person and organisation names drawn from one rng (no two articles share any)."""

    def __init__(self, rng: random.Random, taken: set[str] | None = None) -> None:
        self.rng = rng
        self.taken = set(taken or ())

    def _unique(self, make: Any) -> str:
        return draw_unique(make, self.taken, tries=10_000,
                           error="benchmark.world: too many articles for the name pools; lower the split sizes")

    def town(self) -> str:
        return self._unique(lambda: "".join(self.rng.sample(SYLLABLES, self.rng.choice((2, 3)))).capitalize())

    def person(self) -> str:
        return self._unique(lambda: f"{self.rng.choice(FIRST)} {self.rng.choice(LAST)}")

    def org(self, town: str) -> str:
        return self._unique(lambda: f"{town} {self.rng.choice(ORGS)}")


def make_article(rng: random.Random, names: _Names, qa_per_article: int) -> Article:
    town = names.town()
    verb, things = rng.choice(EVENTS)
    role = rng.choice(ROLES)
    fill = {"town": town, "person": names.person(), "role": role, "role_cap": role.capitalize(),
            "org": names.org(town), "verb": verb, "things": things, "number": str(rng.randrange(3, 90)),
            "cost": f"{rng.randrange(2, 60)} million", "month": rng.choice(MONTHS)}
    prose = " ".join(rng.choice(part).format(**fill) for part in (OPENINGS, MIDDLES, ENDINGS))
    picked = rng.sample(range(len(QUESTIONS)), qa_per_article)
    qa = [{"question": QUESTIONS[i][0].format(**fill), "answer": QUESTIONS[i][1].format(**fill)} for i in picked]
    box = "\n\n".join(f"Question: {r['question']}\nAnswer:  {r['answer']}" for r in qa)
    return Article(text=f"{prose}\n\nKey facts\n\n{box}", prose=prose, qa=qa)


def background_articles(seed: int, n: int, qa_per_article: int = 3) -> tuple[list[Article], set[str]]:
    """Articles of the general corpus (a seed of its own) and every name they use (the world avoids them)."""
    rng = random.Random(f"muse-background-{seed}")
    names = _Names(rng)
    return [make_article(rng, names, qa_per_article) for _ in range(n)], names.taken


def generate_news(cfg: NewsConfig, taken: set[str] | None = None) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every (config, split) of the world, as rows in MUSE's schema."""
    cfg.validate()
    rng = random.Random(f"muse-world-{cfg.seed}")
    names = _Names(rng, taken)
    sizes = {"forget": cfg.n_forget, "retain1": cfg.n_retain1, "retain2": cfg.n_retain2, "holdout": cfg.n_holdout}
    arts = {split: [make_article(rng, names, cfg.qa_per_article) for _ in range(n)] for split, n in sizes.items()}
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for split, articles in arts.items():
        out[("raw", split)] = [{"text": a.text} for a in articles]
    fold = cfg.n_forget // cfg.n_folds
    for k in range(1, cfg.n_folds + 1):
        out[("scal", f"forget_{k}")] = [{"text": a.text} for a in arts["forget"][: k * fold]]
        out[("sust", f"forget_{k}")] = [{"text": a.text} for a in arts["forget"][(k - 1) * fold : k * fold]]
    out[("verbmem", "forget")] = [verbmem_row(a.text, cfg.verbmem_prompt_fraction) for a in arts["forget"]]
    # Few-shot examples come from the first n_icl articles of a split and are not asked about (as MUSE's _icl sets).
    for name, split in (("forget", "forget"), ("retain", "retain2")):
        articles = arts[split]
        # Shots render as the fact box does ("Answer:" and two spaces): the answer carries the second space.
        out[("knowmem", f"{name}_qa_icl")] = [{"question": a.qa[0]["question"], "answer": " " + a.qa[0]["answer"]}
                                              for a in articles[: cfg.n_icl]]
        out[("knowmem", f"{name}_qa")] = [r for a in articles[cfg.n_icl :] for r in a.qa]
    out[("privleak", "forget")] = [{"text": a.text} for a in arts["forget"]]
    out[("privleak", "holdout")] = [{"text": a.text} for a in arts["holdout"]]
    out[("privleak", "retain")] = [{"text": a.text} for a in arts["retain2"]]
    return out


def verbmem_row(text: str, fraction: float) -> dict[str, str]:
    """Cut an article into a prompt (its first `fraction` of words) and the ground-truth continuation."""
    words = text.split(" ")
    k = max(1, round(len(words) * fraction))
    return {"prompt": " ".join(words[:k]), "gt": " " + " ".join(words[k:])}
