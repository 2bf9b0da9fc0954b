"""Service desk hours (guideline 2.9; glossary "BAU"; DESIGN "Hours"): Mon-Fri
08:00-17:30, Sat-Sun 08:00-20:00, London time, closed on English bank holidays."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.timeutil import LONDON, freeze
from app.workflow.hours import desk_status, is_bank_holiday, is_open, next_opening
from tests.conftest import post_form
from tests.forms_data import valid_import


def london(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=LONDON)


# (id, moment, open?, next opening: None means "the moment itself")
CASES = [
    ("monday_0759_closed_opens_0800_same_day", london(2025, 12, 1, 7, 59), False, london(2025, 12, 1, 8, 0)),
    ("monday_0800_open", london(2025, 12, 1, 8, 0), True, None),
    ("friday_1729_open", london(2025, 12, 5, 17, 29), True, None),
    ("friday_1730_closed", london(2025, 12, 5, 17, 30), False, london(2025, 12, 6, 8, 0)),
    ("friday_1731_opens_saturday_0800", london(2025, 12, 5, 17, 31), False, london(2025, 12, 6, 8, 0)),
    ("saturday_1959_open", london(2025, 12, 6, 19, 59), True, None),
    ("saturday_2000_closed", london(2025, 12, 6, 20, 0), False, london(2025, 12, 7, 8, 0)),
    ("sunday_2001_opens_monday_0800", london(2025, 12, 7, 20, 1), False, london(2025, 12, 8, 8, 0)),
    ("wednesday_midnight_closed", london(2025, 12, 3, 0, 0), False, london(2025, 12, 3, 8, 0)),
    # Summer bank holiday, Monday 25 Aug 2025: closed all day.
    ("bank_holiday_monday_noon_closed", london(2025, 8, 25, 12, 0), False, london(2025, 8, 26, 8, 0)),
    ("bank_holiday_monday_0800_closed", london(2025, 8, 25, 8, 0), False, london(2025, 8, 26, 8, 0)),
    ("sunday_before_bank_holiday_skips_monday", london(2025, 8, 24, 20, 30), False, london(2025, 8, 26, 8, 0)),
    ("good_friday_closed", london(2025, 4, 18, 10, 0), False, london(2025, 4, 19, 8, 0)),
    # Christmas 2025: Thursday 25 and Friday 26 closed; the weekend hours apply on Saturday 27.
    ("christmas_eve_after_hours", london(2025, 12, 24, 17, 30), False, london(2025, 12, 27, 8, 0)),
    ("christmas_day", london(2025, 12, 25, 9, 0), False, london(2025, 12, 27, 8, 0)),
    ("boxing_day", london(2025, 12, 26, 19, 0), False, london(2025, 12, 27, 8, 0)),
    ("saturday_after_boxing_day_open", london(2025, 12, 27, 19, 0), True, None),
    ("new_years_eve_after_hours", london(2025, 12, 31, 18, 0), False, london(2026, 1, 2, 8, 0)),
    ("new_years_day", london(2026, 1, 1, 12, 0), False, london(2026, 1, 2, 8, 0)),
    # Christmas 2021 fell at a weekend: 25-26 Dec and the substitute days 27-28 Dec closed.
    ("christmas_2021_weekend_and_substitute_days", london(2021, 12, 24, 18, 0), False, london(2021, 12, 29, 8, 0)),
    ("christmas_2021_substitute_monday", london(2021, 12, 27, 9, 0), False, london(2021, 12, 29, 8, 0)),
    # New Year's Day 2022 on a Saturday: substitute Monday 3 Jan; Sunday 2 Jan is open.
    ("new_year_2022_saturday", london(2022, 1, 1, 9, 0), False, london(2022, 1, 2, 8, 0)),
    ("new_year_2022_substitute_monday", london(2022, 1, 3, 9, 0), False, london(2022, 1, 4, 8, 0)),
    # Clocks go forward at 01:00 UTC on Sunday 30 Mar 2025: 07:30 UTC is 08:30 BST (open).
    ("clock_change_sunday_0730_utc_is_open", datetime(2025, 3, 30, 7, 30, tzinfo=UTC), True, None),
    ("clock_change_sunday_0659_utc_is_closed", datetime(2025, 3, 30, 6, 59, tzinfo=UTC), False,
     london(2025, 3, 30, 8, 0)),
    ("saturday_before_clock_change_0730_utc_is_closed", datetime(2025, 3, 29, 7, 30, tzinfo=UTC), False,
     london(2025, 3, 29, 8, 0)),
    # Clocks go back on Sunday 26 Oct 2025: Saturday 19:30 UTC is 20:30 BST (closed).
    ("saturday_before_autumn_change_1930_utc_closed", datetime(2025, 10, 25, 19, 30, tzinfo=UTC), False,
     london(2025, 10, 26, 8, 0)),
    ("autumn_change_sunday_1930_utc_open", datetime(2025, 10, 26, 19, 30, tzinfo=UTC), True, None),
]


@pytest.mark.parametrize(("moment", "is_open_now", "opens"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hours_of_operation(moment, is_open_now, opens):
    assert is_open(moment) is is_open_now
    expected = moment if opens is None else opens
    nxt = next_opening(moment)
    assert nxt == expected
    # Stated on London's clock, whatever zone it was asked in.
    assert nxt.utcoffset() == expected.astimezone(LONDON).utcoffset()
    assert is_open(nxt)


def test_next_opening_after_the_clock_change_is_0800_bst():
    opens = next_opening(london(2025, 3, 29, 20, 30))
    assert opens == datetime(2025, 3, 30, 7, 0, tzinfo=UTC)  # 08:00 BST
    assert (opens.hour, opens.minute) == (8, 0)


def test_english_bank_holidays_only():
    assert is_bank_holiday(london(2025, 8, 25, 0).date())  # England's summer bank holiday
    assert not is_bank_holiday(london(2025, 8, 4, 0).date())  # Scotland's, not England's
    assert not is_bank_holiday(london(2025, 3, 17, 0).date())  # St Patrick's Day: Northern Ireland only


def test_desk_status_when_closed_says_when_it_opens_and_that_requests_wait():
    status = desk_status(london(2025, 12, 1, 18, 0))
    assert status.open is False
    assert status.next_open == london(2025, 12, 2, 8, 0)
    assert status.closes_at is None
    assert status.message == (
        "The service desk is closed now. It opens again on Tuesday 2 December at 08:00. "
        "Your request will wait until then."
    )
    # The trauma route (Appendix 4) never waits for the desk.
    assert "trauma" in status.trauma_note and "any hour" in status.trauma_note


@pytest.mark.parametrize(
    ("moment", "message"),
    [
        (london(2025, 12, 1, 9, 0), "The service desk is open until 17:30."),
        (london(2025, 12, 6, 9, 0), "The service desk is open until 20:00."),
    ],
    ids=["weekday", "weekend"],
)
def test_desk_status_when_open(moment, message):
    status = desk_status(moment)
    assert status.open is True and status.next_open == moment and status.message == message


# --- The banner on the forms and the confirmation ------------------------------------------

CLOSED = london(2025, 12, 1, 18, 0)  # Monday evening: opens Tuesday 2 December at 08:00
OPEN = london(2025, 12, 2, 10, 0)


@pytest.fixture
def requester(login_as, pas_patients):
    return login_as("requester")


@pytest.mark.parametrize("url", ["/requests/new/import", "/requests/new/export", "/requests/new/cd"])
def test_forms_show_the_closed_banner_outside_hours(client, requester, url):
    with freeze(CLOSED):
        page = client.get(url).get_data(as_text=True)
    assert 'class="hours-banner" role="status"' in page
    assert "The service desk is closed now." in page
    assert "It opens again on Tuesday 2 December at 08:00." in page
    assert "not affected" in page  # the trauma route is always open


def test_import_form_shows_no_banner_when_the_desk_is_open(client, requester):
    with freeze(OPEN):
        page = client.get("/requests/new/import").get_data(as_text=True)
    assert "hours-banner" not in page and "service desk is closed" not in page


def test_confirmation_shows_the_closed_banner_outside_hours(client, requester):
    with freeze(CLOSED):
        response = post_form(client, "/requests/new/import", valid_import())
        assert response.status_code == 302
        page = client.get(response.headers["Location"]).get_data(as_text=True)
        later = client.get(response.headers["Location"].split("?")[0]).get_data(as_text=True)
    assert "Request submitted" in page
    assert "It opens again on Tuesday 2 December at 08:00. Your request will wait until then." in page
    # Only on the confirmation: the request's own page later does not repeat it.
    assert "hours-banner" not in later


def test_confirmation_shows_no_banner_in_hours(client, requester):
    with freeze(OPEN):
        response = post_form(client, "/requests/new/import", valid_import())
        page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Request submitted" in page and "hours-banner" not in page
