"""When the CDs left at a Radiology Reception are next collected (Appendix 5).

No Flask here: a pure function of the date, so labels, the collection chart and tests
all agree on one rule.
"""

from __future__ import annotations

from datetime import date, timedelta

from app.timeutil import is_bank_holiday

WEDNESDAY = 2  # date.weekday()

# Appendix 5: "Standard service CD collections are every Wednesday from Radiology
# Reception at the LRI, GH and LGH."
DROP_OFF_SITES: dict[str, str] = {
    "LRI": "Radiology Reception, Leicester Royal Infirmary",
    "GH": "Radiology Reception, Glenfield Hospital",
    "LGH": "Radiology Reception, Leicester General Hospital",
}


def is_working_day(day: date) -> bool:
    """Monday to Friday, and not an English bank holiday."""
    return day.weekday() < 5 and not is_bank_holiday(day)


def next_collection_date(today: date) -> date:
    """The first Wednesday strictly after `today`, or the next working day after it
    when that Wednesday is a bank holiday (25 Dec 2024 -> Fri 27 Dec 2024)."""
    days_ahead = (WEDNESDAY - today.weekday()) % 7 or 7
    collection = today + timedelta(days=days_ahead)
    while not is_working_day(collection):
        collection += timedelta(days=1)
    return collection
