"""MUSE loader: one code path for the hub datasets (`muse-bench/MUSE-News`, `muse-bench/MUSE-Books`) and local copies.

MUSE's hub datasets are organised as configs with splits (its dataset cards, `data/{bbc,hp}/readme.md` in
jaechan-repo/muse_bench):

| config     | splits                                                  | columns            |
|------------|---------------------------------------------------------|--------------------|
| `raw`      | `forget`, `retain1`, `retain2`, `holdout`               | `text`             |
| `verbmem`  | `forget`                                                | `prompt`, `gt`     |
| `knowmem`  | `forget_qa`, `forget_qa_icl`, `retain_qa`, `retain_qa_icl` | `question`, `answer` |
| `privleak` | `forget`, `holdout`, `retain`                           | `text`             |
| `scal`     | `forget_1` .. `forget_4` (nested: forget_2 contains forget_1) | `text`       |
| `sust`     | `forget_1` .. `forget_4` (disjoint requests)            | `text`             |

A local directory holds `<config>/<split>.json` or `.jsonl` files of the same schema; the embedded `muse_mini`
world is written in exactly this form. Unlearning trains on `raw/forget` (or a `scal`/`sust` split) and on
`raw/retain1`, MUSE's retain set for the regulariser. Every row is validated before any training starts, and every
error names the file (or hub id, config and split), the row and the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn.errors import ConfigError, DataError

#: Columns of each config.
COLUMNS: dict[str, tuple[str, ...]] = {
    "raw": ("text",),
    "verbmem": ("prompt", "gt"),
    "knowmem": ("question", "answer"),
    "privleak": ("text",),
    "scal": ("text",),
    "sust": ("text",),
}
#: `benchmark.forget_split` -> (config, split) of the text unlearning trains on.
FORGET_SPLITS: dict[str, tuple[str, str]] = {
    "forget": ("raw", "forget"),
    **{f"scal_{k}": ("scal", f"forget_{k}") for k in range(1, 5)},
    **{f"sust_{k}": ("sust", f"forget_{k}") for k in range(1, 5)},
}
RETAIN_SPLIT = ("raw", "retain1")
HUB_IDS = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}


@dataclass
class MuseData:
    """Everything one MUSE task reads (texts are strings, QA rows dicts with `question` and `answer`)."""

    name: str
    forget_text: list[str]
    retain_text: list[str]
    verbmem: list[dict[str, str]]
    forget_qa: list[dict[str, str]]
    forget_qa_icl: list[dict[str, str]]
    retain_qa: list[dict[str, str]]
    retain_qa_icl: list[dict[str, str]]
    privleak_forget: list[str]
    privleak_holdout: list[str]
    privleak_retain: list[str] = field(default_factory=list)


def check_forget_split(name: Any) -> tuple[str, str]:
    if name not in FORGET_SPLITS:
        raise ConfigError(f"benchmark.forget_split: {name!r} not one of {', '.join(FORGET_SPLITS)}")
    return FORGET_SPLITS[name]


def convert_rows(raw: list[Any], config: str, where: str) -> list[dict[str, str]]:
    """Validate rows of one config: each a JSON object with the config's string columns (extra keys are kept)."""
    cols = COLUMNS[config]
    rows = []
    for i, row in enumerate(raw):
        if not isinstance(row, dict):
            raise DataError(f"{where}: row {i}: expected a JSON object, got {type(row).__name__}")
        for key in cols:
            if row.get(key) is None:
                raise DataError(f"{where}: row {i}: missing key {key!r}")
            if not isinstance(row[key], str):
                raise DataError(f"{where}: row {i}: key {key!r} must be a string, got {type(row[key]).__name__}")
        rows.append(dict(row))
    if not rows:
        raise DataError(f"{where}: no rows")
    return rows


def _read_json_rows(path: Path) -> list[Any]:
    """A JSON array or JSON lines, read with the standard library (errors name the file and line)."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        pass
    rows = []
    for lineno, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: invalid JSON on line {lineno + 1}: {err.msg}") from None
    return rows


def local_path(directory: Path, config: str, split: str) -> Path | None:
    for suffix in (".json", ".jsonl"):
        path = directory / config / f"{split}{suffix}"
        if path.is_file():
            return path
    return None


def write_local(directory: Path, config: str, split: str, rows: list[dict[str, Any]]) -> None:
    """Write one split in the local layout (JSON lines), as the embedded world does."""
    path = directory / config / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


class MuseSource:
    """Reads `(config, split)` from a hub dataset id or a local directory, validated."""

    def __init__(self, source: str | Path, data_dir: str | Path | None = None) -> None:
        self.source = str(source)
        self.directory = None if data_dir is None else Path(data_dir).expanduser()
        if self.directory is not None and not self.directory.is_dir():
            raise DataError(f"{self.directory}: MUSE data directory not found (benchmark.data_dir)")

    def load(self, config: str, split: str, required: bool = True) -> list[dict[str, str]]:
        if self.directory is not None:
            path = local_path(self.directory, config, split)
            if path is None:
                if not required:
                    return []
                raise DataError(f"{self.directory / config / (split + '.json')}: file not found "
                                f"(also tried {split}.jsonl)")
            return convert_rows(_read_json_rows(path), config, str(path))
        return self._load_hub(config, split, required)

    def _load_hub(self, config: str, split: str, required: bool) -> list[dict[str, str]]:
        import datasets

        try:
            ds = datasets.load_dataset(self.source, config, split=split)
        except Exception as err:  # offline, unknown id, missing split: one line naming the way out
            if not required:
                return []
            reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise DataError(f"{self.source} (config {config!r}, split {split!r}) could not be loaded from the hub "
                            f"({reason}); download it, or set benchmark.data_dir to a local copy laid out as "
                            f"<dir>/{config}/{split}.json") from None
        return convert_rows(ds.to_list(), config, f"{self.source}/{config}/{split}")


def load_muse(name: str, source: str | Path, forget_split: str = "forget", data_dir: str | Path | None = None
              ) -> MuseData:
    """Load and validate every split a MUSE task needs (`privleak/retain` is optional)."""
    forget_cfg = check_forget_split(forget_split)
    src = MuseSource(source, data_dir)

    def texts(config: str, split: str, required: bool = True) -> list[str]:
        return [r["text"] for r in src.load(config, split, required)]

    def qa(split: str) -> list[dict[str, str]]:
        return [{"question": r["question"], "answer": r["answer"]} for r in src.load("knowmem", split)]

    return MuseData(
        name=name,
        forget_text=texts(*forget_cfg),
        retain_text=texts(*RETAIN_SPLIT),
        verbmem=[{"prompt": r["prompt"], "gt": r["gt"]} for r in src.load("verbmem", "forget")],
        forget_qa=qa("forget_qa"),
        forget_qa_icl=qa("forget_qa_icl"),
        retain_qa=qa("retain_qa"),
        retain_qa_icl=qa("retain_qa_icl"),
        privleak_forget=texts("privleak", "forget"),
        privleak_holdout=texts("privleak", "holdout"),
        privleak_retain=texts("privleak", "retain", required=False),
    )
