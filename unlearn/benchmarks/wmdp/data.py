"""Loading WMDP's text corpora: the hazardous forget corpora and the retain text, from the hub or local files.

A corpus entry (`benchmark.forget` / `benchmark.retain`, a list) is `{name, source, config, split, field}`:
- `source` a local `.jsonl` / `.txt` file: JSONL lines give `field` (default `text`; a line that is a JSON string is
  the text itself, as `cyber-forget-corpus.jsonl`), a text file one text per non-empty line;
- otherwise a hub dataset id loaded with `datasets.load_dataset(source, config, split=split)` and its `field` column
  (`cais/wmdp-corpora` configs `cyber-forget-corpus`, ...; `wikitext` config `wikitext-2-raw-v1` split `test`, as
  WMDP's `rmu/utils.py:73-78`). WMDP's bio forget corpus is not on the hub (it is shared on request): point `source`
  at the local `bio-forget-corpus.jsonl`.
Empty texts are dropped (WMDP keeps wikitext lines longer than `min_len` = 0 characters). Offline or missing data
fails with one line naming the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unlearn.errors import ConfigError

CORPUS_KEYS = ("name", "source", "config", "split", "field")


def resolve_corpora(value: Any, key: str) -> list[dict[str, Any]]:
    """Validate a list of corpus entries (see the module doc)."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: expected a non-empty list of corpora ({{name, source, config, split, field}})")
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("source"), str) or not entry["source"]:
            raise ConfigError(f"{key}[{i}].source: expected a hub dataset id or a file path, got {entry!r}")
        unknown = sorted(set(entry) - set(CORPUS_KEYS))
        if unknown:
            raise ConfigError(f"{key}[{i}]: unknown key(s) {unknown}; known: {list(CORPUS_KEYS)}")
        out.append({"name": entry.get("name") or entry["source"], "source": entry["source"],
                    "config": entry.get("config"), "split": entry.get("split", "train"),
                    "field": entry.get("field", "text")})
    return out


def _local_texts(path: Path, field: str, key: str) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ConfigError(f"{key}: {path}:{n} is not JSON ({err.msg})") from None
                if isinstance(row, dict):
                    if field not in row:
                        raise ConfigError(f"{key}: {path}:{n} has no field {field!r}")
                    row = row[field]
                texts.append(str(row))
            else:
                texts.append(line.rstrip("\n"))
    return texts


def load_corpus(entry: dict[str, Any], key: str) -> list[str]:
    """The non-empty texts of one corpus entry."""
    source = entry["source"]
    path = Path(source).expanduser()
    looks_local = path.suffix in (".jsonl", ".txt") or source.startswith((".", "/", "~"))
    if looks_local:
        if not path.is_file():
            raise ConfigError(f"{key}: corpus file {path} does not exist")
        texts = _local_texts(path, entry["field"], key)
    else:
        import datasets

        try:
            data = datasets.load_dataset(source, entry["config"], split=entry["split"])
        except Exception as err:  # offline, gated or unknown: one line naming the key
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{key}: cannot load hub dataset {source!r} (config {entry['config']!r}, split "
                              f"{entry['split']!r}): {first}") from None
        if entry["field"] not in data.column_names:
            raise ConfigError(f"{key}: {source} has no column {entry['field']!r} (columns: {data.column_names})")
        texts = [str(t) for t in data[entry["field"]]]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ConfigError(f"{key}: corpus {entry['name']!r} ({source}) has no non-empty text")
    return texts


def load_corpora(entries: list[dict[str, Any]], key: str, max_texts: int | None = None) -> list[str]:
    """All texts of the entries, in order; `max_texts` caps each corpus (first N texts)."""
    out: list[str] = []
    for i, entry in enumerate(entries):
        out += load_corpus(entry, f"{key}[{i}]")[:max_texts]
    return out


__all__ = ["load_corpora", "load_corpus", "resolve_corpora"]
