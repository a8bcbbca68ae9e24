"""Repeated failures logged once per interval, with a count (DESIGN §13).

While Redis or the database is down, the same operation fails on every message; one line per
failure would bury everything else (and cost CPU when it matters). A ``FailureLog`` writes the
first failure at once, then at most one line per ``interval`` saying how many more there were,
and one line when the operation works again.
"""

from __future__ import annotations

import logging
import time


class FailureLog:
    """One operation's failures on one logger: ``failed`` on each failure, ``ok`` on success."""

    def __init__(self, log: logging.Logger, what: str, interval: float = 10.0) -> None:
        self._log = log
        self._what = what
        self._interval = interval
        self._failing = False
        self._since_logged = 0
        self._total = 0
        self._logged_at = 0.0

    @property
    def failing(self) -> bool:
        return self._failing

    def failed(self, error: BaseException | str) -> None:
        now = time.monotonic()
        self._total += 1
        if not self._failing:
            self._failing = True
            self._logged_at = now
            self._since_logged = 0
            self._log.warning("%s failed: %s", self._what, _describe(error))
            return
        self._since_logged += 1
        if now - self._logged_at >= self._interval:
            self._log.warning(
                "%s failed %d more times in %.0f s (last: %s)",
                self._what, self._since_logged, now - self._logged_at, _describe(error),
            )  # fmt: skip
            self._logged_at = now
            self._since_logged = 0

    def ok(self) -> None:
        """The operation worked: one line if it had been failing."""
        if self._failing:
            self._failing = False
            self._log.warning("%s works again after %d failures", self._what, self._total)
            self._total = 0


def _describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    text = str(error)
    return f"{error.__class__.__name__}: {text}" if text else error.__class__.__name__
