"""Capped exponential backoff with jitter, for every retry loop of the edge."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays ``initial, 2*initial, ...`` up to ``maximum``, each jittered to 50-100 %.

    Jitter spreads the retries of many edges (or many in-flight batches) that failed at the
    same moment, so that they do not come back at the same moment either.
    """

    def __init__(self, initial: float, maximum: float) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError(f"need 0 < initial <= maximum, got {initial}, {maximum}")
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        """The next delay in seconds (and double the one after, up to ``maximum``)."""
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self._next = self.initial
