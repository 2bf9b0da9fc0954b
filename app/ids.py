"""Ids and whole numbers typed by someone else: parsed only within what the columns hold.

Every id column is an INTEGER: 32-bit signed on PostgreSQL, which refuses a larger value
in a query with an error (a 500 where the user should see "no such page"); SQLite takes
64 bits and raises OverflowError past them. A number from a URL, a form or a cursor is
checked against that range before it reaches a query. ASCII digits only: `str.isdigit`
also says yes to "²" and "٣", which `int` then refuses or reads as 3.
"""

from __future__ import annotations

import re

MAX_ID = 2**31 - 1  # PostgreSQL's INTEGER, the type of every id column
_WHOLE = re.compile(r"\s*(-?[0-9]{1,19})\s*")  # [0-9], not \d: ASCII digits only


def whole_number(text: object, low: int, high: int) -> int | None:
    """`text` as a whole number from `low` to `high`; None for anything else."""
    if not isinstance(text, str) or (match := _WHOLE.fullmatch(text)) is None:
        return None
    value = int(match.group(1))
    return value if low <= value <= high else None


def parse_id(text: object) -> int | None:
    """A row id typed or posted (1 to MAX_ID); None when it cannot be one."""
    return whole_number(text, 1, MAX_ID)


def is_id(value: object) -> bool:
    """An id decoded from JSON: an int in the id range (a JSON `true` is not 1)."""
    return type(value) is int and 1 <= value <= MAX_ID
