"""Progress bars: one switch for every long loop (model building, unlearning, evaluation).

A 7B evaluation or a world build runs for minutes with nothing else on screen, so each long loop gets a bar, but
only where a person watches: on an interactive console. Bars interleave into noise in the log files of parallel
grid jobs and multirun launchers and in captured test output, so they are off there. A run sets the switch for
everything it calls (`progress_bars`), and code that has no run around it (`make worlds`) falls back to "is stderr
a terminal". The state is a context variable, so nested runs and threads each see their own setting.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from tqdm.auto import tqdm

_ENABLED: ContextVar[bool | None] = ContextVar("unlearn_progress_bars", default=None)


def bars_on() -> bool:
    """Whether bars show now: the innermost `progress_bars` setting, else whether stderr is a terminal."""
    enabled = _ENABLED.get()
    return sys.stderr.isatty() if enabled is None else enabled


@contextmanager
def progress_bars(enabled: bool | None) -> Iterator[None]:
    """Turn bars on (True) or off (False) for the code inside; None: decide by whether stderr is a terminal."""
    token = _ENABLED.set(enabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def bar(**kwargs: Any) -> tqdm:
    """A tqdm bar that follows the switch and clears itself when done (`leave=False`), so logs keep only results."""
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(disable=not bars_on(), **kwargs)
