"""A content-addressed on-disk cache for built artefacts (worlds, tokenizers, trained models).

An entry's directory name is a hash of everything that determines its content, so a changed setting can never
be served a stale artefact, and an unchanged one is never rebuilt. Entries are built in a temporary sibling
directory and published with one atomic `os.rename`, so a crash mid-build leaves no half-written entry and an
existing entry is never overwritten; a per-entry file lock makes concurrent runs build each entry once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "build_info.json"
"""Every entry writes this file last; a directory without it is not an entry (e.g. a stray manual copy)."""


def cache_key(spec: Any, length: int = 16) -> str:
    """Stable hex digest of a JSON-serialisable spec (key order does not matter)."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def content_digest(text: str, length: int = 16) -> str:
    """Short hex digest of one piece of text (sha256 of its UTF-8 bytes): build records list the digests of what a
    model was trained on (MUSE articles, TOFU QA rows), so a test or a reader can check it without the text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def read_info(entry: Path) -> dict[str, Any]:
    """The entry's build_info.json (plain JSON, never pickle)."""
    with open(entry / COMPLETE_MARKER, encoding="utf-8") as fh:
        return json.load(fh)


@contextlib.contextmanager
def _entry_lock(entry: Path) -> Iterator[None]:
    """Exclusive advisory lock per entry, so parallel runs (e.g. a sweep's workers) build a model once and the
    others wait and reuse it. Without `fcntl` (non-POSIX) the atomic rename alone still keeps entries whole."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(entry.parent / f".{entry.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_cached(
    entry: Path,
    build: Callable[[Path], dict[str, Any]],
    spec: dict[str, Any],
    log: Callable[[str], None] = print,
) -> tuple[Path, dict[str, Any]]:
    """Return `entry` (building it first if absent) and its build info.

    `build(tmp_dir)` writes the artefact into `tmp_dir` and returns a JSON-serialisable info dict; this
    function adds `spec` to it, writes `build_info.json`, and renames `tmp_dir` to `entry`.
    """
    entry = Path(entry)
    if (entry / COMPLETE_MARKER).is_file():
        log(f"[cache] reuse {entry}")
        return entry, read_info(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    with _entry_lock(entry):
        if (entry / COMPLETE_MARKER).is_file():  # built by another process while we waited for the lock
            log(f"[cache] reuse {entry} (built concurrently)")
            return entry, read_info(entry)
        if entry.exists():
            # Never overwrite: an incomplete directory under a final name is not ours to delete.
            raise FileExistsError(f"cache entry {entry} exists but has no {COMPLETE_MARKER}; remove it by hand")
        tmp = entry.parent / f".tmp-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            info = dict(build(tmp))
            info["spec"] = spec
            with open(tmp / COMPLETE_MARKER, "w", encoding="utf-8") as fh:
                json.dump(info, fh, indent=2, sort_keys=True, default=str)
            os.rename(tmp, entry)  # atomic publish; fails rather than replace an existing directory
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log(f"[cache] built {entry}")
    return entry, info
