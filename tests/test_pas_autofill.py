"""The request forms' S number autofill (issue 13.8): POST /requests/new/patient answers the
patient's details from the PAS register, read-only, with a status line; the look-up is
audited like a search and limited per user; a submission saves the register's values."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from redis.exceptions import ConnectionError as RedisConnectionError

from app.audit import AuditEvent
from app.config import ConfigError, Settings, parse_windows
from app.extensions import db
from app.patients import lookup
from app.requests.models import Request
from tests.conftest import csrf_token, post_form
from tests.forms_data import valid_cd, valid_export, valid_import
from tests.test_intake import field_error, field_value

URL = "/requests/new/patient"
FOUND = "Found in the PAS register"
NOT_FOUND = "Not in the PAS register"
TYPED = {"nhs_number": "999 000 0034", "family_name": "Typed", "given_name": "Tess", "dob": "1960-01-02",
         "gender": "Other", "address_line1": "1 Typed Street", "address_line2": "", "town": "Typedtown",
         "county": "", "postcode": "LE1 1AA"}


@pytest.fixture
def requester(login_as, pas_patients):
    return login_as("requester")


def look_up(client, s_number: str, token: str | None = None, **fields: str):  # noqa: ANN201
    """What htmx posts when the S number changes: the form's fields, the page's token as a header."""
    token = token if token is not None else csrf_token(client, "/requests/new/import")
    return client.post(URL, data={"s_number": s_number, **fields},
                       headers={"HX-Request": "true", "X-CSRFToken": token})


def readonly(page: str, field_id: str) -> bool:
    tag = re.search(rf'<input\b[^>]*\bid="{re.escape(field_id)}"[^>]*>', page)
    assert tag, f"no input {field_id}"
    return bool(re.search(r"\sreadonly\b", tag.group(0)))


def status_line(page: str) -> str:
    match = re.search(r'<p id="pas-status"[^>]*>(.*?)</p>', page, re.S)
    assert match, "no status line"
    return re.sub(r"<[^>]+>", "", match.group(1)).strip()


def searches() -> list[str]:
    return list(db.session.scalars(sa.select(AuditEvent.detail).where(AuditEvent.action == "search")
                                   .order_by(AuditEvent.id)))


def saved() -> Request:
    return db.session.scalars(sa.select(Request).order_by(Request.id.desc())).first()


# --- The look-up ------------------------------------------------------------------------------


def test_a_registered_s_number_fills_every_detail_read_only_as_the_register_holds_it(client, requester):
    response = look_up(client, "s123 4567", **TYPED)  # as typed: lower case, a space
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and "HX-Request" in response.headers["Vary"]
    assert page.lstrip().startswith('<div id="patient-details"') and "<html" not in page
    assert FOUND in status_line(page) and "SMITH, Margaret" in status_line(page)
    assert 'hx-swap-oob="innerHTML"' in page  # into the page's live region, which stays
    shown = {"nhs_number": "999 000 0018", "family_name": "SMITH", "given_name": "Margaret", "dob": "1948-03-14",
             "gender": "Female", "address_line1": "12 Welford Road", "address_line2": "", "town": "Leicester",
             "county": "", "postcode": "LE2 7AA"}
    for name, value in shown.items():
        assert field_value(page, name) == value, name
        assert readonly(page, name), f"{name} is not read-only"
    assert "Typed" not in page and "Tess" not in page  # nothing typed is mixed with the register's
    assert field_value(page, "pas_from") == "S1234567"


def test_fields_the_register_lacks_stay_for_typing_and_keep_what_was_typed(client, requester):
    page = look_up(client, "S0000003", **TYPED).get_data(as_text=True)  # O'BRIEN: no NHS number
    assert FOUND in status_line(page)
    assert field_value(page, "family_name") == "O'BRIEN" and readonly(page, "family_name")
    assert field_value(page, "nhs_number") == "999 000 0034" and not readonly(page, "nhs_number")
    assert "the register has none for this patient" in page


def test_an_s_number_not_in_the_register_keeps_the_typed_details_editable(client, requester):
    page = look_up(client, "S9999999", **TYPED).get_data(as_text=True)
    assert NOT_FOUND in status_line(page) and "check the S number" in status_line(page)
    for name, value in TYPED.items():
        if name != "gender":
            assert field_value(page, name) == value, name
            assert not readonly(page, name), name
    assert "pas_from" not in page


def test_a_malformed_s_number_says_why_asks_nothing_and_is_not_counted(client, requester, app):
    app.config["IEP_SETTINGS"].pas_lookup_windows = ((1, 900),)
    page = look_up(client, "S12", **TYPED).get_data(as_text=True)
    assert status_line(page).startswith("Not a valid S number: An S number is the letter S followed by 7 digits")
    assert field_value(page, "family_name") == "Typed" and not readonly(page, "family_name")
    assert searches() == []
    assert FOUND in status_line(look_up(client, "S1234567").get_data(as_text=True))  # the one allowed is still there


def test_details_filled_for_one_s_number_are_cleared_when_the_next_is_not_registered(client, requester):
    token = csrf_token(client, "/requests/new/import")
    filled = look_up(client, "S1234567", token).get_data(as_text=True)
    posted = {name: field_value(filled, name) for name in ("pas_from", *TYPED)}
    page = look_up(client, "S9999999", token, **posted).get_data(as_text=True)
    assert NOT_FOUND in status_line(page)
    assert "SMITH" not in page and "Welford" not in page and "999 000 0018" not in page
    assert field_value(page, "family_name") == "" and not readonly(page, "family_name")


def test_each_look_up_is_audited_as_a_search_with_what_was_searched_for(client, requester):
    token = csrf_token(client, "/requests/new/import")
    look_up(client, "S1234567", token)
    look_up(client, "S9999999", token)
    look_up(client, "", token)  # nothing typed: nothing looked up
    patient_id = db.session.scalar(sa.text("SELECT id FROM patients WHERE s_number = 'S1234567'"))
    assert searches() == [f'PAS register look-up: s_number="S1234567" found patient record {patient_id}',
                          'PAS register look-up: s_number="S9999999" not found']
    actors = db.session.scalars(sa.select(AuditEvent.actor).where(AuditEvent.action == "search")).all()
    assert set(actors) == {requester.email}


def test_look_ups_over_the_limit_are_refused_with_a_message_and_the_fields_stay_editable(
        client, requester, app, monkeypatch):
    app.config["IEP_SETTINGS"].pas_lookup_windows = ((3, 900), (4, 86400))
    clock = [1_800_000_000.0]
    monkeypatch.setattr(lookup, "now", lambda: clock[0])
    token = csrf_token(client, "/requests/new/import")
    for _ in range(3):
        assert FOUND in status_line(look_up(client, "S1234567", token).get_data(as_text=True))
        clock[0] += 10
    for _ in range(2):
        page = look_up(client, "S1234567", token, **TYPED).get_data(as_text=True)
        assert "the most PAS register look-ups allowed (3 in 15 minutes)" in status_line(page)
        assert "try again in 15 minutes" in status_line(page)
        assert field_value(page, "family_name") == "Typed" and not readonly(page, "family_name")
        assert "SMITH" not in page and "Welford" not in page
    # One row for the refusals while they last, not one per refused look-up.
    assert searches()[3:] == ['PAS register look-up refused (over 3 in 15 minutes): s_number="S1234567"; further '
                              'refusals while it lasts are not recorded']
    clock[0] += 900 - 20 + 1  # the first look-up leaves the 15 minutes: one more
    assert FOUND in status_line(look_up(client, "S1234567", token).get_data(as_text=True))
    clock[0] += 3600
    page = look_up(client, "S1234567", token).get_data(as_text=True)  # the day's 4 are used
    assert "look-ups allowed (4 in 1 day)" in status_line(page) and "try again in 23 hours" in status_line(page)


def test_the_limit_is_each_persons_own(app, client, login_as, make_user, pas_patients):
    app.config["IEP_SETTINGS"].pas_lookup_windows = ((1, 900),)
    login_as("requester")
    assert FOUND in status_line(look_up(client, "S1234567").get_data(as_text=True))
    assert "look-ups allowed (1 in 15 minutes)" in status_line(look_up(client, "S1234567").get_data(as_text=True))
    other = app.test_client()
    user = make_user("requester")
    post_form(other, "/login", {"email": user.email, "password": "correct-horse-9"})
    assert FOUND in status_line(look_up(other, "S1234567").get_data(as_text=True))


def test_without_redis_nothing_is_looked_up_and_the_details_are_typed(client, requester, monkeypatch):
    def down():  # noqa: ANN202
        raise RedisConnectionError("no Redis")

    token = csrf_token(client, "/requests/new/import")
    monkeypatch.setattr(lookup, "redis_conn", down)
    response = look_up(client, "S1234567", token, **TYPED)
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "cannot be searched just now" in status_line(page)
    assert "SMITH" not in page and field_value(page, "family_name") == "Typed"


def test_the_look_up_needs_the_pages_csrf_token(client, requester):
    response = look_up(client, "S1234567", token="not-the-token")
    assert response.status_code == 400
    assert "SMITH" not in response.get_data(as_text=True)
    response = client.post(URL, data={"s_number": "S1234567"}, headers={"HX-Request": "true"})
    assert response.status_code == 400
    assert searches() == []


def test_the_look_up_needs_a_signed_in_user(client, pas_patients):
    response = client.post(URL, data={"s_number": "S1234567"}, headers={"HX-Request": "true"})
    assert response.status_code == 401 and response.headers["HX-Redirect"].startswith("/login")
    assert searches() == []


@pytest.mark.parametrize("role", ["requester", "analyst", "am_radiology", "radiologist", "admin"])
def test_everyone_who_may_fill_the_forms_may_look_up(client, login_as, pas_patients, role):
    login_as(role)
    assert client.get("/requests/new/import").status_code == 200  # the forms are every role's
    assert FOUND in status_line(look_up(client, "S1234567").get_data(as_text=True))


# --- The form page ------------------------------------------------------------------------------


def test_the_form_asks_for_the_look_up_and_has_its_live_region_from_the_start(client, requester):
    page = client.get("/requests/new/import").get_data(as_text=True)
    tag = re.search(r'<input\b[^>]*\bid="s_number"[^>]*>', page).group(0)
    assert f'hx-post="{URL}"' in tag and 'hx-trigger="change delay:200ms"' in tag
    assert 'hx-target="#patient-details"' in tag
    assert re.search(r'<p id="pas-status" class="pas-status" role="status" aria-live="polite">\s*</p>', page)
    assert not readonly(page, "family_name")


def test_a_refused_submission_keeps_the_registers_details_read_only(client, requester):
    token = csrf_token(client, "/requests/new/import")
    filled = look_up(client, "S1234567", token).get_data(as_text=True)
    autofilled = {name: field_value(filled, name) for name in ("pas_from", *TYPED)}
    response = client.post("/requests/new/import", data={**valid_import(), **autofilled, "contact_phone": "",
                                                         "csrf_token": token})
    page = response.get_data(as_text=True)
    assert response.status_code == 422 and field_error(page, "contact_phone")
    assert readonly(page, "family_name") and field_value(page, "family_name") == "SMITH"
    assert FOUND in status_line(page)


def test_a_refused_submission_typed_without_the_look_up_keeps_what_was_typed(client, requester):
    response = post_form(client, "/requests/new/import", {**valid_import(), "contact_phone": ""})
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert field_value(page, "family_name") == "Smith" and not readonly(page, "family_name")
    assert status_line(page) == ""


# --- The submission takes the register's values ------------------------------------------------


@pytest.mark.parametrize(("url", "valid"), [("/requests/new/import", valid_import),
                                            ("/requests/new/export", valid_export),
                                            ("/requests/new/cd", valid_cd)], ids=["import", "export", "cd"])
def test_a_submission_saves_the_registers_details_not_what_was_typed(client, requester, url, valid):
    typed = {**valid(), "family_name": "smith", "given_name": "MARGARET", "nhs_number": "", "gender": "",
             "address_line1": "1 Other Street", "town": "Elsewhere", "county": "Leicestershire",
             "postcode": "le1 1aa"}
    response = post_form(client, url, typed)
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    req = saved()
    assert (req.family_name, req.given_name, req.nhs_number, req.gender) == ("SMITH", "Margaret", "9990000018",
                                                                             "Female")
    assert (req.address_line1, req.address_line2, req.town, req.county, req.postcode) == (
        "12 Welford Road", "", "Leicester", "", "LE2 7AA")


def test_what_the_register_lacks_is_saved_as_typed(client, requester):
    data = {**valid_import(), "s_number": "S0000003", "nhs_number": "", "family_name": "O'Brien",
            "given_name": "Siobhan", "dob": "1990-06-30"}
    response = post_form(client, "/requests/new/import", data)
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    assert saved().nhs_number == "" and saved().family_name == "O'BRIEN"


@pytest.mark.parametrize(("field", "value"), [("family_name", "JONES"), ("given_name", "Ann"),
                                              ("dob", "1950-01-01"), ("nhs_number", "999 000 0026")])
def test_a_read_only_detail_edited_by_the_client_is_refused_not_saved(client, requester, field, value):
    token = csrf_token(client, "/requests/new/import")
    filled = look_up(client, "S1234567", token).get_data(as_text=True)
    autofilled = {name: field_value(filled, name) for name in ("pas_from", *TYPED)}
    response = client.post("/requests/new/import", data={**valid_import(), **autofilled, field: value,
                                                         "csrf_token": token})
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert "does not match the one registered" in field_error(page, field)
    assert db.session.scalar(sa.select(sa.func.count(Request.id))) == 0


def test_an_address_edited_by_the_client_is_replaced_by_the_registers(client, requester):
    token = csrf_token(client, "/requests/new/import")
    filled = look_up(client, "S1234567", token).get_data(as_text=True)
    autofilled = {name: field_value(filled, name) for name in ("pas_from", *TYPED)}
    response = client.post("/requests/new/import", data={**valid_import(), **autofilled, "csrf_token": token,
                                                         "address_line1": "Somewhere Else 1"})
    assert response.status_code == 302
    assert saved().address_line1 == "12 Welford Road"


# --- The setting ---------------------------------------------------------------------------------


def test_the_limit_setting_reads_count_per_duration_pairs(tmp_path, monkeypatch):
    assert parse_windows("X", "20/15m,150/1d") == ((20, 900), (150, 86400))
    assert parse_windows("X", " 5/30s , 2/1h") == ((5, 30), (2, 3600))
    monkeypatch.delenv("PAS_LOOKUP_WINDOWS", raising=False)
    assert Settings.from_env(tmp_path).pas_lookup_windows == ((20, 900), (150, 86400))
    monkeypatch.setenv("PAS_LOOKUP_WINDOWS", "10/5m")
    assert Settings.from_env(tmp_path).pas_lookup_windows == ((10, 300),)


@pytest.mark.parametrize("raw", ["", "20", "20/", "0/15m", "-1/15m", "20/15", "20/15w", "²/1d", "20/0m", "a/1d"])
def test_a_malformed_limit_setting_fails_loudly(raw):
    with pytest.raises(ConfigError, match="PAS_LOOKUP_WINDOWS must be COUNT/DURATION pairs"):
        parse_windows("PAS_LOOKUP_WINDOWS", raw)
