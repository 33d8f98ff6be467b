"""A minimal progress protocol: long work (calibration, verification) reports through it, the CLI draws it.

Library code never prints; it receives a ``Progress`` and calls ``task``. The default does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

__all__ = ["NULL_PROGRESS", "NullProgress", "Progress"]


class Progress(Protocol):
    """Opens a task of ``total`` steps; the yielded callable advances it by n steps."""

    def task(self, label: str, total: int) -> contextlib.AbstractContextManager[Callable[[int], None]]: ...


class NullProgress:
    """Progress that shows nothing."""

    @contextlib.contextmanager
    def task(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        yield lambda n: None


NULL_PROGRESS: Progress = NullProgress()
