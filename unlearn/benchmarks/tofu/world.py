"""A seeded synthetic TOFU-like world: fictitious authors and the QA configs TOFU ships.

Why synthetic: TOFU's point is that the target model learned facts (about fictitious authors) that no other
model knows, so forgetting can be compared with a model that never saw them. A world generated from a seed
keeps that property at a size a CPU can memorise, with the same configs and schema as `locuslab/TOFU`, so the
same loader, evaluator and metrics run on both.

Design choices that the metrics depend on:
- every fact has two phrasings: the `answer` phrasing (used for training) and a `paraphrased_answer` phrasing;
- the `perturbed_answer`s use the *paraphrase's* phrasing with a wrong value drawn from the same pool as the
  true one, so the truth ratio `P(perturbed) / P(paraphrased)` compares facts, not wording;
- forget splits are the LAST 1/5/10 percent of authors (as in TOFU), hence nested;
- `real_authors` and `world_facts` are separate fact sets that every model (target and retain) trains on,
  so model utility measures knowledge that unlearning should leave intact.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearn.benchmarks.sampling import draw_unique, sample_wrong, syllable_word
from unlearn.errors import ConfigError

if TYPE_CHECKING:
    from unlearn.benchmarks.tofu.general import GeneralKnowledge

FORGET_SPLITS = ("forget01", "forget05", "forget10")
FORGET_PERCENT = {"forget01": 1, "forget05": 5, "forget10": 10}


def retain_split_for(forget_split: str) -> str:
    """forget01 -> retain99, forget05 -> retain95, forget10 -> retain90."""
    if forget_split not in FORGET_PERCENT:
        raise ConfigError(f"benchmark.forget_split: {forget_split!r} not one of {', '.join(FORGET_SPLITS)}")
    return f"retain{100 - FORGET_PERCENT[forget_split]:02d}"


def holdout_split_for(forget_split: str) -> str:
    """forget05 -> holdout05 (authors never trained on, as many as the forget split has)."""
    retain_split_for(forget_split)  # validates
    return forget_split.replace("forget", "holdout")


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and seed of a synthetic world. Every field enters the model cache key.

    Defaults: 100 authors x 10 QA (TOFU has 200 x 20), so forget01 / forget05 / forget10 hold 1 / 5 / 10
    authors (10 / 50 / 100 QA). The size is set by the build budget: a 1.3M-parameter Llama needs ~20 epochs
    to reach 95% greedy exact match whatever the learning rate, and target plus retain model must build in a
    few minutes on 2 CPU cores; 200 authors doubles that. `n_authors: 200` gives TOFU's author counts.
    """

    seed: int = 0
    n_authors: int = 100
    qa_per_author: int = 10
    n_perturbed: int = 3
    n_holdout_authors: int = 10
    n_real_authors: int = 40
    n_world_facts: int = 40
    retain_eval_fraction: float = 0.1
    retain_eval_max: int = 400

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, key: str = "benchmark.world") -> WorldConfig:
        """Build from a config mapping; unknown keys and bad values raise ConfigError naming the key."""
        data = dict(data or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {unknown}; known: {sorted(known)}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            want = float if name == "retain_eval_fraction" else int
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{key}.{name}: expected a number, got {value!r}")
            if want is int and not float(value).is_integer():
                raise ConfigError(f"{key}.{name}: expected an integer, got {value!r}")
            values[name] = want(value)
        cfg = cls(**values)
        cfg.validate(key)
        return cfg

    def validate(self, key: str = "benchmark.world") -> None:
        """Raise ConfigError if the sizes cannot make a well-formed world."""
        if self.n_authors < 2:
            raise ConfigError(f"{key}.n_authors: must be >= 2, got {self.n_authors}")
        if not 1 <= self.qa_per_author <= len(ATTRIBUTES):
            raise ConfigError(f"{key}.qa_per_author: must be in 1..{len(ATTRIBUTES)}, got {self.qa_per_author}")
        if not 1 <= self.n_perturbed <= MIN_POOL - 1:
            raise ConfigError(f"{key}.n_perturbed: must be in 1..{MIN_POOL - 1}, got {self.n_perturbed}")
        if self.n_holdout_authors < n_forget_authors(self.n_authors, "forget10"):
            raise ConfigError(
                f"{key}.n_holdout_authors: must be >= the forget10 author count "
                f"({n_forget_authors(self.n_authors, 'forget10')}), got {self.n_holdout_authors}"
            )
        if n_forget_authors(self.n_authors, "forget10") >= self.n_authors:
            raise ConfigError(f"{key}.n_authors: too small to leave any retain author ({self.n_authors})")
        if self.n_real_authors < self.n_perturbed + 1:
            raise ConfigError(f"{key}.n_real_authors: must be > n_perturbed, got {self.n_real_authors}")
        if self.n_world_facts < 1:
            raise ConfigError(f"{key}.n_world_facts: must be >= 1, got {self.n_world_facts}")
        if not 0.0 < self.retain_eval_fraction <= 1.0:
            raise ConfigError(f"{key}.retain_eval_fraction: must be in (0, 1], got {self.retain_eval_fraction}")
        if self.retain_eval_max < 1:
            raise ConfigError(f"{key}.retain_eval_max: must be >= 1, got {self.retain_eval_max}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def n_forget_authors(n_authors: int, forget_split: str) -> int:
    """Number of authors in a forget split: round(pct% of n_authors), at least 1 (monotone, so nested)."""
    return max(1, round(n_authors * FORGET_PERCENT[forget_split] / 100))


# ---------------------------------------------------------------------------------------------------- pools
# Shared pools: a perturbed answer takes another value from the same pool, so it is as plausible as the truth.

CITIES = [
    "Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Krakow", "Dublin", "Seville", "Tbilisi", "Montreal",
    "Adelaide", "Bergen", "Cusco", "Dakar", "Edinburgh", "Fukuoka", "Graz", "Havana", "Izmir", "Jaipur",
    "Kyoto", "Lyon", "Manila", "Naples", "Porto", "Quito", "Riga", "Santiago", "Tallinn", "Utrecht",
    "Valencia", "Warsaw", "Zagreb", "Accra", "Bogota", "Cairo", "Delhi", "Geneva", "Helsinki", "Istanbul",
]  # fmt: skip
GENRES = [
    "science fiction", "historical fiction", "crime novels", "poetry", "fantasy", "horror", "romance",
    "travel writing", "biography", "satire", "thrillers", "children's books", "magical realism", "essays",
    "war novels", "mystery", "drama", "short stories", "gothic fiction", "literary fiction",
]  # fmt: skip
JOBS = [
    "a baker", "an architect", "a nurse", "a carpenter", "a pilot", "a librarian", "a fisherman", "a surgeon",
    "a teacher", "a tailor", "a journalist", "a farmer", "a painter", "a lawyer", "a chemist", "a mechanic",
    "a musician", "an engineer", "a photographer", "a dentist", "a florist", "a judge", "a sailor",
    "a veterinarian", "a butcher", "an astronomer", "a police officer", "a potter", "a banker", "a chef",
]  # fmt: skip
AWARDS = [
    "the Silver Quill Prize", "the Amber Lantern Award", "the Northern Star Medal", "the Golden Inkwell Prize",
    "the Iron Pen Award", "the Crimson Leaf Prize", "the Blue Harbor Award", "the Lighthouse Medal",
    "the Open Page Prize", "the White Raven Award", "the Copper Compass Prize", "the Evergreen Award",
    "the Stone Bridge Prize", "the Morning Tide Medal", "the Velvet Owl Award", "the Granite Book Prize",
    "the Paper Crane Award", "the Starling Medal", "the Hidden Valley Prize", "the Quiet River Award",
]  # fmt: skip
UNIVERSITIES = [
    "Aldermoor University", "the University of Castelwick", "Brightwater College", "Dunhallow University",
    "the Royal Academy of Letters", "Fenwick Institute", "Greymouth University", "Harrowgate College",
    "the University of Ivory Bay", "Juniper Hall University", "Kestrel University", "Lindenfield College",
    "Marrowby University", "the Northgate Institute", "Oakhaven University", "Pinecrest College",
    "Queensfold University", "Redcliff University", "Saltmarsh College", "Thornbury University",
]  # fmt: skip
TITLE_ADJECTIVES = [
    "Silent", "Broken", "Hidden", "Golden", "Last", "Burning", "Frozen", "Distant", "Secret", "Wandering",
    "Forgotten", "Crimson", "Endless", "Paper", "Hollow", "Glass", "Midnight", "Iron", "Velvet", "Shifting",
]  # fmt: skip
TITLE_NOUNS = [
    "Garden", "River", "Lantern", "Harbor", "Mirror", "Orchard", "Tower", "Compass", "Letters", "Winter",
    "Island", "Feather", "Kingdom", "Clock", "Bridge", "Forest", "Shadow", "Voyage", "Song", "Door",
]  # fmt: skip
CURRENCIES = [
    "the crown", "the mark", "the florin", "the talon", "the dinar", "the shell", "the ducat", "the sol",
    "the real", "the penny", "the lira", "the drachma", "the guilder", "the peso", "the thaler",
]  # fmt: skip
ANIMALS = [
    "the lynx", "the heron", "the otter", "the ibex", "the falcon", "the badger", "the stag", "the crane",
    "the wolf", "the bison", "the swan", "the fox", "the eagle", "the bear", "the seal", "the owl",
]  # fmt: skip
LANGUAGES = [
    "Varnish", "Ostric", "Melan", "Turvic", "Selenic", "Karvian", "Dorish", "Plenic", "Ulmic", "Bravian",
    "Zentic", "Orlan", "Quessan", "Falmic", "Irvish",
]  # fmt: skip
YEARS = [str(y) for y in range(1921, 1996)]

MIN_POOL = 15  # smallest pool size; bounds n_perturbed

_ONSETS = ["b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "th",
           "sh", "kr", "st", "gr", "tr", "vl"]  # fmt: skip
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou", "ia", "y"]
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "m", "x", "nd", "rk"]


@dataclass(frozen=True)
class Attribute:
    """One kind of fact about an author, with two question and two answer phrasings."""

    key: str
    pool: str
    questions: tuple[str, str]  # (question, paraphrased_question)
    answers: tuple[str, str]  # (answer phrasing, paraphrase phrasing); perturbed answers use the second


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("birthplace", "cities",
              ("Where was {name} born?", "In which city was {name} born?"),
              ("{name} was born in {value}.", "The birthplace of {name} is {value}.")),
    Attribute("birth_year", "years",
              ("In what year was {name} born?", "When was {name} born?"),
              ("{name} was born in the year {value}.", "The birth year of {name} is {value}.")),
    Attribute("genre", "genres",
              ("What genre does {name} write?", "Which literary genre is {name} known for?"),
              ("{name} is best known for writing {value}.", "The main genre of {name} is {value}.")),
    Attribute("father_job", "jobs",
              ("What did the father of {name} do for a living?", "What was the profession of {name}'s father?"),
              ("The father of {name} worked as {value}.", "{name}'s father was {value} by profession.")),
    Attribute("mother_job", "jobs",
              ("What did the mother of {name} do for a living?", "What was the profession of {name}'s mother?"),
              ("The mother of {name} worked as {value}.", "{name}'s mother was {value} by profession.")),
    Attribute("award", "awards",
              ("Which award has {name} won?", "What prize was given to {name}?"),
              ("{name} won {value}.", "{name} was honoured with {value}.")),
    Attribute("first_book", "titles",
              ("What was the first book by {name}?", "Which book was the debut of {name}?"),
              ('The first book by {name} was "{value}".', '{name} made a debut with "{value}".')),
    Attribute("famous_book", "titles",
              ("What is the best-known book by {name}?", "Which book made {name} famous?"),
              ('{name} is famous for the book "{value}".', 'The most celebrated work of {name} is "{value}".')),
    Attribute("university", "universities",
              ("Where did {name} study?", "Which university did {name} attend?"),
              ("{name} studied at {value}.", "{name} is a graduate of {value}.")),
    Attribute("residence", "cities",
              ("Where does {name} live now?", "In which city does {name} currently live?"),
              ("{name} now lives in {value}.", "The current home of {name} is {value}.")),
)  # fmt: skip

REAL_AUTHOR_ATTRIBUTE = Attribute(
    "wrote", "real_author_names",
    ('Who wrote the book "{title}"?', 'Who is the author of "{title}"?'),
    ('"{title}" was written by {value}.', 'The author of "{title}" is {value}.'),
)  # fmt: skip

WORLD_FACT_ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("capital", "capitals",
              ("What is the capital of {name}?", "Which city is the capital of {name}?"),
              ("The capital of {name} is {value}.", "{value} is the capital city of {name}.")),
    Attribute("currency", "currencies",
              ("What is the currency of {name}?", "Which currency is used in {name}?"),
              ("The currency of {name} is {value}.", "People in {name} pay with {value}.")),
    Attribute("animal", "animals",
              ("What is the national animal of {name}?", "Which animal is the symbol of {name}?"),
              ("The national animal of {name} is {value}.", "{value} is the national symbol of {name}.")),
    Attribute("language", "languages",
              ("What language is spoken in {name}?", "Which language do people speak in {name}?"),
              ("The main language of {name} is {value}.", "People in {name} speak {value}.")),
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- generation
class Names:
    """Unique pronounceable names from random syllables (no collision across the whole world).

    `used` holds names taken elsewhere (the general corpus's people and countries) that must not be reused.
    """

    def __init__(self, rng: random.Random, used: set[str] | None = None) -> None:
        self.rng = rng
        self.used: set[str] = set(used or ())

    def word(self, n_syllables: int) -> str:
        return draw_unique(lambda: syllable_word(self.rng, _ONSETS, _VOWELS, _CODAS, n_syllables), self.used,
                           ok=lambda w: len(w) >= 3)

    def person(self) -> str:
        return f"{self.word(self.rng.choice((2, 2, 3)))} {self.word(self.rng.choice((2, 3)))}"


def titles(rng: random.Random) -> list[str]:
    """Every book title of the pools, shuffled by `rng`."""
    out = [f"The {a} {n}" for a in TITLE_ADJECTIVES for n in TITLE_NOUNS]
    rng.shuffle(out)
    return out


def base_pools(book_titles: list[str]) -> dict[str, list[str]]:
    """Value pools of the author attributes and world facts, with `book_titles` as the title pool."""
    return {
        "cities": CITIES, "years": YEARS, "genres": GENRES, "jobs": JOBS, "awards": AWARDS,
        "universities": UNIVERSITIES, "titles": book_titles, "currencies": CURRENCIES,
        "animals": ANIMALS, "languages": LANGUAGES,
    }  # fmt: skip


def _qa(attr: Attribute, value: str, wrong: list[str], fill: dict[str, str]) -> dict[str, Any]:
    """One QA row with its evaluation fields (paraphrase and perturbed answers use the same phrasing)."""
    return {
        "question": attr.questions[0].format(**fill),
        "answer": attr.answers[0].format(value=value, **fill),
        "paraphrased_question": attr.questions[1].format(**fill),
        "paraphrased_answer": attr.answers[1].format(value=value, **fill),
        "perturbed_answer": [attr.answers[1].format(value=w, **fill) for w in wrong],
    }


def _make_authors(
    rng: random.Random, names: Names, n: int, cfg: WorldConfig, pools: dict, first_id: int, prefix: str
) -> list[list[dict[str, Any]]]:
    """QA rows (with evaluation fields) for `n` fictitious authors, grouped by author."""
    authors = []
    for i in range(n):
        name = names.person()
        first, famous = rng.sample(pools["titles"], 2)  # two different books
        values = {a.key: rng.choice(pools[a.pool]) for a in ATTRIBUTES}
        values["first_book"], values["famous_book"] = first, famous
        chosen = sorted(rng.sample(range(len(ATTRIBUTES)), cfg.qa_per_author))
        rows = []
        for j in chosen:
            attr = ATTRIBUTES[j]
            wrong = sample_wrong(rng, pools[attr.pool], values[attr.key], cfg.n_perturbed)
            row = _qa(attr, values[attr.key], wrong, {"name": name})
            row["author_id"] = f"{prefix}{first_id + i:04d}"
            rows.append(row)
        authors.append(rows)
    return authors


def _plain(rows: list[dict[str, Any]], keep_author: bool = True) -> list[dict[str, Any]]:
    """Training-config view of rows (question, answer[, author_id]), as TOFU's forget/retain configs."""
    keys = ("question", "answer", "author_id") if keep_author else ("question", "answer")
    return [{k: r[k] for k in keys if k in r} for r in rows]


def generate_world(
    cfg: WorldConfig | None = None, general: GeneralKnowledge | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Generate every TOFU config of the world described by `cfg` (deterministic in `cfg.seed`).

    Returns a mapping config name -> rows: `full`, `forget01/05/10`, `retain99/95/90`,
    `forget01/05/10_perturbed`, `retain_perturbed`, `real_authors`, `real_authors_perturbed`,
    `world_facts`, `world_facts_perturbed`, `holdout01/05/10`.

    With `general` (the pretraining recipe, `unlearn.benchmarks.tofu.general`), the real-authors and world-facts
    configs are the general corpus's, which the base model learned in pretraining, and fictitious authors take no
    name and no book title of it; `cfg.n_real_authors` / `cfg.n_world_facts` are then unused. Without it (the
    from-scratch recipe) the world makes its own, exactly as before.
    """
    cfg = cfg or WorldConfig()
    cfg.validate()
    # One stream per purpose (string seeds are hashed with sha512 by `random`, so they are stable across
    # processes and Python versions), so that changing one size does not reshuffle unrelated parts.
    rng_names = random.Random(f"unlearn-world-{cfg.seed}-names")
    rng_authors = random.Random(f"unlearn-world-{cfg.seed}-authors")
    rng_holdout = random.Random(f"unlearn-world-{cfg.seed}-holdout")
    rng_real = random.Random(f"unlearn-world-{cfg.seed}-real")
    rng_facts = random.Random(f"unlearn-world-{cfg.seed}-facts")
    rng_eval = random.Random(f"unlearn-world-{cfg.seed}-eval")
    names = Names(rng_names, used=None if general is None else general.names)

    all_titles = titles(random.Random(f"unlearn-world-{cfg.seed}-titles"))
    # Fictitious authors' books and real authors' books come from disjoint title sets.
    if general is None:
        n_real_titles = cfg.n_real_authors
        if n_real_titles > len(all_titles) - MIN_POOL:
            raise ConfigError(
                f"benchmark.world.n_real_authors: at most {len(all_titles) - MIN_POOL}, got {n_real_titles}"
            )
        pools = base_pools(all_titles[n_real_titles:])
    else:
        pools = base_pools([t for t in all_titles if t not in general.titles])

    authors = _make_authors(rng_authors, names, cfg.n_authors, cfg, pools, 0, "A")
    holdout_authors = _make_authors(rng_holdout, names, cfg.n_holdout_authors, cfg, pools, 0, "H")

    world: dict[str, list[dict[str, Any]]] = {}
    full_eval = [r for a in authors for r in a]
    world["full"] = _plain(full_eval)
    n_retain90_authors = cfg.n_authors - n_forget_authors(cfg.n_authors, "forget10")
    for split in FORGET_SPLITS:
        k = n_forget_authors(cfg.n_authors, split)
        forget_rows = [r for a in authors[cfg.n_authors - k :] for r in a]
        retain_rows = [r for a in authors[: cfg.n_authors - k] for r in a]
        world[split] = _plain(forget_rows)
        world[f"{split}_perturbed"] = [dict(r) for r in forget_rows]
        world[retain_split_for(split)] = _plain(retain_rows)
        world[holdout_split_for(split)] = _plain([r for a in holdout_authors[:k] for r in a])

    # retain_perturbed: a sample of retain90 rows, which lie in every retain split.
    retain90_rows = [r for a in authors[:n_retain90_authors] for r in a]
    n_eval = min(
        len(retain90_rows), cfg.retain_eval_max, max(1, math.ceil(cfg.retain_eval_fraction * len(retain90_rows)))
    )
    picked = sorted(rng_eval.sample(range(len(retain90_rows)), n_eval))
    world["retain_perturbed"] = [dict(retain90_rows[i]) for i in picked]

    if general is not None:
        world["real_authors_perturbed"] = [dict(r) for r in general.real_authors]
        world["real_authors"] = _plain(general.real_authors)
        world["world_facts_perturbed"] = [dict(r) for r in general.world_facts]
        world["world_facts"] = _plain(general.world_facts)
        return world

    # Real authors: famous books and who wrote them; every model learns these.
    real_names = [names.person() for _ in range(cfg.n_real_authors)]
    real_rows = []
    for name, title in zip(real_names, all_titles[:n_real_titles], strict=True):
        wrong = sample_wrong(rng_real, real_names, name, cfg.n_perturbed)
        real_rows.append(_qa(REAL_AUTHOR_ATTRIBUTE, name, wrong, {"title": title}))
    world["real_authors_perturbed"] = real_rows
    world["real_authors"] = _plain(real_rows)

    # World facts: facts about fictitious countries; every model learns these.
    n_countries = math.ceil(cfg.n_world_facts / len(WORLD_FACT_ATTRIBUTES))
    countries = [names.word(rng_facts.choice((2, 3))) + "ia" for _ in range(n_countries)]
    capitals = [names.word(2) for _ in range(max(n_countries, MIN_POOL))]
    fact_pools = {"capitals": capitals, "currencies": CURRENCIES, "animals": ANIMALS, "languages": LANGUAGES}
    fact_rows: list[dict[str, Any]] = []
    for c, country in enumerate(countries):
        for attr in WORLD_FACT_ATTRIBUTES:
            if len(fact_rows) == cfg.n_world_facts:
                break
            pool = fact_pools[attr.pool]
            value = capitals[c] if attr.key == "capital" else rng_facts.choice(pool)
            fact_rows.append(_qa(attr, value, sample_wrong(rng_facts, pool, value, cfg.n_perturbed), {"name": country}))
    world["world_facts_perturbed"] = fact_rows
    world["world_facts"] = _plain(fact_rows)
    return world


def world_texts(world: dict[str, list[dict[str, Any]]], kind: str = "all") -> list[str]:
    """Strings of the world for tokenizer training: "questions" (question, paraphrased_question), "answers"
    (answer, paraphrased and perturbed answers) or "all"."""
    if kind not in ("all", "questions", "answers"):
        raise ValueError(f"world_texts: kind must be all, questions or answers, got {kind!r}")
    texts: list[str] = []
    for name in sorted(world):
        for row in world[name]:
            if kind in ("all", "questions"):
                texts.extend(row[k] for k in ("question", "paraphrased_question") if k in row)
            if kind in ("all", "answers"):
                texts.extend(row[k] for k in ("answer", "paraphrased_answer") if k in row)
                texts.extend(row.get("perturbed_answer", []))
    return texts


def write_world(
    cfg: WorldConfig, directory: str | Path, world: dict[str, list[dict[str, Any]]] | None = None
) -> Path:
    """Write every config as `<name>.json` (JSON lines, as TOFU's files) so `load_tofu(directory)` reads it.

    `world` is the generated world (`generate_world(cfg)` when not given)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    world = generate_world(cfg) if world is None else world
    for name, rows in world.items():
        with open(directory / f"{name}.json", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(directory / "world_config.json", "w", encoding="utf-8") as fh:
        json.dump(cfg.to_dict(), fh, indent=2, sort_keys=True)
    return directory


def pretraining_rows(
    world: dict[str, list[dict[str, Any]]], role: str, forget_split: str | None = None
) -> list[dict[str, str]]:
    """Training rows (question, answer) for the embedded models.

    role "target": every fictitious author plus real authors and world facts (the model to unlearn from).
    role "retain": the retain split of `forget_split` plus real authors and world facts (the model that never
    saw the forget set: forget quality compares against it).
    """
    if role == "target":
        authors = world["full"]
    elif role == "retain":
        if forget_split is None:
            raise ConfigError("pretraining_rows: role 'retain' needs a forget_split")
        authors = world[retain_split_for(forget_split)]
    else:
        raise ConfigError(f"pretraining_rows: role must be 'target' or 'retain', got {role!r}")
    rows = [*authors, *world["real_authors"], *world["world_facts"]]
    return [{"question": r["question"], "answer": r["answer"]} for r in rows]
