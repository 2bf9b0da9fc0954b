"""One clock for the desk: stored times are UTC, shown times are the trust's (London).

Tests move the clock with `freeze(...)` instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

LONDON = ZoneInfo("Europe/London")
_frozen: datetime | None = None


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return _frozen if _frozen is not None else datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """A stored time as aware UTC (SQLite hands back naive values, stored as UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def local_now() -> datetime:
    """Now on the wall clocks of the hospital."""
    return utcnow().astimezone(LONDON)


def local_today() -> date:
    return local_now().date()


def as_local(moment: datetime) -> datetime:
    """A stored time shown on the hospital's clock (naive values are UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(LONDON)


@lru_cache(maxsize=64)
def _bank_holidays(year: int) -> frozenset[date]:
    # Per year and frozen: the package's own dict grows lazily and is not thread-safe.
    return frozenset(holidays.country_holidays("GB", subdiv="ENG", years=year))


def is_bank_holiday(day: date) -> bool:
    """An English bank holiday (including one-off ones: jubilees, state funerals)."""
    return day in _bank_holidays(day.year)


@contextmanager
def freeze(moment: datetime) -> Iterator[None]:
    """Pin `utcnow()` to `moment` for the duration of the block (tests only)."""
    global _frozen
    previous, _frozen = _frozen, moment.astimezone(UTC)
    try:
        yield
    finally:
        _frozen = previous
