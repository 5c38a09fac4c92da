"""TOFU loader: one code path for the hub dataset (`locuslab/TOFU`) and local directories of JSON files.

A local directory holds `<config>.json` or `<config>.jsonl` files (JSON lines or a JSON array) with the hub's
config names and schema; the embedded `tofu_mini` world is written in exactly this form. Both sources are read
with `datasets.load_dataset` and then pass through the same conversion and validation, so a schema problem is
caught the same way whichever source is used, before any training starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn.benchmarks.tofu.world import FORGET_SPLITS, holdout_split_for, retain_split_for
from unlearn.errors import DataError

TRAIN_KEYS = ("question", "answer")
EVAL_KEYS = ("question", "answer", "paraphrased_answer", "perturbed_answer")

# In TOFU's own evaluation the truth-ratio baseline for real authors and world facts is `answer` (their
# answers are short names, with no separate paraphrase); rows lacking `paraphrased_answer` get it from there.
_PARAPHRASE_FALLBACK = {"real_authors_perturbed", "world_facts_perturbed"}


@dataclass
class TofuData:
    """Every split the TOFU protocol uses for one forget split (rows are plain dicts).

    forget: forgetXX_perturbed rows; retain: retainYY rows (the retain loss's data); retain_eval:
    retain_perturbed; real_authors / world_facts: their *_perturbed rows; holdout: holdoutXX (may be empty).
    """

    name: str
    forget: list[dict[str, Any]]
    retain: list[dict[str, Any]]
    retain_eval: list[dict[str, Any]]
    real_authors: list[dict[str, Any]]
    world_facts: list[dict[str, Any]]
    holdout: list[dict[str, Any]] = field(default_factory=list)


def tofu_configs(forget_split: str) -> dict[str, str]:
    """TofuData field -> TOFU config name for `forget_split` (validates the split name)."""
    return {
        "forget": f"{forget_split}_perturbed",
        "retain": retain_split_for(forget_split),
        "retain_eval": "retain_perturbed",
        "real_authors": "real_authors_perturbed",
        "world_facts": "world_facts_perturbed",
        "holdout": holdout_split_for(forget_split),
    }


# ---------------------------------------------------------------------------------------------------- validation
def _check_str(row: dict[str, Any], key: str, where: str, index: int) -> None:
    if key not in row or row[key] is None:
        raise DataError(f"{where}: row {index}: missing key {key!r}")
    if not isinstance(row[key], str):
        raise DataError(f"{where}: row {index}: key {key!r} must be a string, got {type(row[key]).__name__}")


def convert_rows(raw: list[dict[str, Any]], config: str, where: str) -> list[dict[str, Any]]:
    """Validate and normalise rows of one config; errors name `where` (file or hub id), row and key.

    Row numbers are 0-based positions in the file (line index for JSON lines). Extra keys are kept: they are
    harmless to the framework and useful for analysis (e.g. `author_id`).
    """
    is_eval = config.endswith("_perturbed")
    rows: list[dict[str, Any]] = []
    for i, row in enumerate(raw):
        if not isinstance(row, dict):
            raise DataError(f"{where}: row {i}: expected a JSON object, got {type(row).__name__}")
        row = dict(row)
        for key in TRAIN_KEYS:
            _check_str(row, key, where, i)
        if is_eval:
            if row.get("paraphrased_answer") is None and config in _PARAPHRASE_FALLBACK:
                row["paraphrased_answer"] = row["answer"]
            _check_str(row, "paraphrased_answer", where, i)
            pert = row.get("perturbed_answer")
            if pert is None:
                raise DataError(f"{where}: row {i}: missing key 'perturbed_answer'")
            if isinstance(pert, str):
                pert = [pert]
            if not isinstance(pert, list) or not pert or not all(isinstance(p, str) for p in pert):
                raise DataError(f"{where}: row {i}: key 'perturbed_answer' must be a non-empty list of strings")
            row["perturbed_answer"] = list(pert)
        rows.append(row)
    if not rows:
        raise DataError(f"{where}: no rows")
    return rows


def _diagnose_json(path: Path) -> DataError:
    """Explain why `datasets` could not read a local file, naming row and key when the JSON itself is fine.

    pyarrow's JSON reader rejects a column whose type changes between rows (e.g. one numeric `answer`) without
    saying which row; reading the file with the standard `json` module finds it.
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
        rows = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        rows = []
        for lineno, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                return DataError(f"{path}: invalid JSON on line {lineno + 1}: {err.msg}")
    config = path.name.rsplit(".", 1)[0]
    try:
        convert_rows(rows, config, str(path))
    except DataError as err:
        return err
    return DataError(f"{path}: could not be read as JSON lines")


# ---------------------------------------------------------------------------------------------------- loading
def _find_local(directory: Path, config: str) -> Path | None:
    for suffix in (".json", ".jsonl"):
        path = directory / f"{config}{suffix}"
        if path.is_file():
            return path
    return None


def _load_local(directory: Path, config: str, required: bool = True) -> list[dict[str, Any]] | None:
    import datasets  # local import: keeps `import unlearn.benchmarks.tofu.data` light

    path = _find_local(directory, config)
    if path is None:
        if not required:
            return None
        raise DataError(f"{directory / (config + '.json')}: file not found (also tried {config}.jsonl)")
    # One progress bar per small file is noise in run logs; restore the caller's setting afterwards.
    bars_were_off = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as err:  # datasets/pyarrow raise many types for a bad file; diagnose precisely
        raise _diagnose_json(path) from err
    finally:
        if not bars_were_off:
            datasets.utils.enable_progress_bars()
    return convert_rows(ds.to_list(), config, str(path))


def _load_hub(source: str, config: str, required: bool = True) -> list[dict[str, Any]] | None:
    import datasets

    try:
        ds = datasets.load_dataset(source, config, split="train")
    except Exception as err:
        if not required:
            return None
        raise DataError(f"{source} (config {config!r}): could not be loaded: {err}") from err
    return convert_rows(ds.to_list(), config, f"{source}/{config}")


def is_local_source(source: str | Path) -> bool:
    """A source is local when it names an existing directory or looks like a path rather than a hub id."""
    text = str(source)
    return Path(text).expanduser().is_dir() or text.startswith((".", "/", "~")) or text.count("/") > 1


def load_tofu(source: str | Path, forget_split: str) -> TofuData:
    """Load and validate the TOFU splits of `forget_split` from a hub id or a local directory.

    The holdout config is optional (older TOFU revisions lack it): when absent, `holdout` is empty.
    """
    if forget_split not in FORGET_SPLITS:
        retain_split_for(forget_split)  # raises ConfigError naming benchmark.forget_split
    configs = tofu_configs(forget_split)
    if is_local_source(source):
        directory = Path(source).expanduser()
        if not directory.is_dir():
            raise DataError(f"{directory}: TOFU data directory not found")

        def load(config: str, required: bool = True) -> list[dict[str, Any]] | None:
            return _load_local(directory, config, required)
    else:

        def load(config: str, required: bool = True) -> list[dict[str, Any]] | None:
            return _load_hub(str(source), config, required)

    loaded = {name: load(config) for name, config in configs.items() if name != "holdout"}
    holdout = load(configs["holdout"], required=False) or []
    return TofuData(name=forget_split, holdout=holdout, **loaded)  # type: ignore[arg-type]
