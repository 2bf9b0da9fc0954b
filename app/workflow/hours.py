"""When the service desk is open (guideline 2.9; glossary "BAU"; DESIGN "Hours").

No Flask and no database here: pure functions of a moment, so the form banners, later
e-mails and scheduled rules, and the tests all agree on one rule.

- Monday to Friday 08:00–17:30, Saturday and Sunday 08:00–20:00, on London's clocks
  (GMT in winter, BST in summer: a clock-change day is computed in London time).
- Closed all day on an English bank holiday, as listed by the `holidays` package
  (GB, subdivision ENG). That list holds both the day itself and its substitute
  ("observed") weekday when Christmas, Boxing Day or New Year's Day fall at a weekend;
  the desk is closed on both.
- The trauma route to Nottingham (guideline 2.8, Appendix 4) is run by the on-call
  radiologist and is always open: nothing here applies to it.

Moments may be given in any time zone; a naive datetime is read as UTC, as everywhere
else in the desk (`app.timeutil.as_local`). Results are in London time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from app.timeutil import LONDON, as_local, is_bank_holiday

# Guideline 2.9: "Normal working hours are 08:00 to 17:30 (Monday to Friday)",
# "Saturday and Sunday 08:00 – 20:00". Opening time inclusive, closing time exclusive.
WEEKDAY_HOURS = (time(8, 0), time(17, 30))
WEEKEND_HOURS = (time(8, 0), time(20, 0))

# The longest run of closed days is a Christmas with both days at a weekend (four
# days in 2021: 25-28 December); anything near this bound means a broken holiday list.
_MAX_CLOSED_DAYS = 14

# Shown beside the closed notice: the desk's hours never hold up the trauma route.
TRAUMA_NOTE = (
    "Urgent trauma transfers to Nottingham are not affected: the on-call radiologist "
    "sends those images at any hour (guideline Appendix 4)."
)


def opening_hours(day: date) -> tuple[datetime, datetime] | None:
    """When the desk opens and closes on `day` (London time), or None if closed all day."""
    if is_bank_holiday(day):
        return None
    opens, closes = WEEKEND_HOURS if day.weekday() >= 5 else WEEKDAY_HOURS
    return datetime.combine(day, opens, tzinfo=LONDON), datetime.combine(day, closes, tzinfo=LONDON)


def is_open(moment: datetime) -> bool:
    """Is the service desk open at `moment`? (08:00 is open; 17:30 on a weekday is not.)"""
    local = as_local(moment)
    hours = opening_hours(local.date())
    # Same tzinfo on both sides: compared on the wall clock, which is what the rule means.
    return hours is not None and hours[0] <= local < hours[1]


def next_opening(moment: datetime) -> datetime:
    """The next moment the desk is open, in London time.

    If the desk is open at `moment`, that is `moment` itself (in London time); otherwise
    the opening time of the next working period (e.g. Friday 17:31 -> Saturday 08:00).
    """
    local = as_local(moment)
    if is_open(local):
        return local
    day = local.date()
    for _ in range(_MAX_CLOSED_DAYS):
        hours = opening_hours(day)
        if hours is not None and local < hours[0]:
            return hours[0]
        day += timedelta(days=1)
    raise RuntimeError(f"the service desk is not open in the {_MAX_CLOSED_DAYS} days after {local:%Y-%m-%d}")


def closing_time(moment: datetime) -> datetime | None:
    """When the current working period ends (London time), or None if closed at `moment`."""
    local = as_local(moment)
    hours = opening_hours(local.date())
    if hours is None or not hours[0] <= local < hours[1]:
        return None
    return hours[1]


@dataclass(frozen=True)
class DeskStatus:
    """The desk at one moment, with the sentence a requester reads."""

    open: bool
    # When open, the moment asked about; when closed, the next opening time (London).
    next_open: datetime
    # When open, today's closing time; when closed, None.
    closes_at: datetime | None
    message: str
    trauma_note: str = TRAUMA_NOTE


def _day_and_time(moment: datetime) -> str:
    return f"{moment:%A} {moment.day} {moment:%B} at {moment:%H:%M}"


def desk_status(moment: datetime) -> DeskStatus:
    """Open or closed at `moment`, when that changes, and how to say so."""
    local = as_local(moment)
    closes = closing_time(local)
    if closes is not None:
        return DeskStatus(
            open=True,
            next_open=local,
            closes_at=closes,
            message=f"The service desk is open until {closes:%H:%M}.",
        )
    opens = next_opening(local)
    return DeskStatus(
        open=False,
        next_open=opens,
        closes_at=None,
        message=(
            "The service desk is closed now. "
            f"It opens again on {_day_and_time(opens)}. "
            "Your request will wait until then."
        ),
    )
