"""The three request forms through the Flask test client (guideline 2.3 a, 2.6 a,
2.7 d-e; Appendices 2, 3, 6; DESIGN "Validation")."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.audit import AuditEvent
from app.extensions import db
from app.requests.models import Request
from app.timeutil import local_today
from tests.conftest import post_form
from tests.forms_data import valid_cd, valid_export, valid_import

FORMS = {
    "import": ("/requests/new/import", valid_import),
    "export": ("/requests/new/export", valid_export),
    "cd": ("/requests/new/cd", valid_cd),
}


def field_error(page: str, field_id: str) -> str:
    """The error shown beside a field ('' if none), wired to it by aria-describedby."""
    match = re.search(rf'<p class="field-error" id="{re.escape(field_id)}-error">(.*?)</p>', page, re.S)
    if not match:
        return ""
    tag = re.search(rf'<(?:input|select|textarea)\b[^>]*\bid="{re.escape(field_id)}"[^>]*>', page)
    fieldset = re.search(rf'<fieldset[^>]*aria-describedby="[^"]*{re.escape(field_id)}-error', page)
    assert (tag and f"{field_id}-error" in tag.group(0)) or fieldset, f"{field_id} error not linked"
    return html.unescape(re.sub(r"<[^>]+>", "", match.group(1))).replace("Error:", "").strip()


def field_value(page: str, field_id: str) -> str:
    tag = re.search(rf'<input\b[^>]*\bid="{re.escape(field_id)}"[^>]*>', page)
    assert tag, f"no input {field_id}"
    value = re.search(r'\bvalue="([^"]*)"', tag.group(0))
    return html.unescape(value.group(1)) if value else ""


def request_count() -> int:
    return db.session.scalar(sa.select(sa.func.count(Request.id)))


def other_exam(n: int) -> dict[str, str]:
    """Exam line 1 moved back `n` days: a different examination of the same patient."""
    return {"exams-0-exam_date": (local_today() - timedelta(days=30 + n)).isoformat()}


@pytest.fixture
def requester(login_as, pas_patients):
    return login_as("requester")


# --- Happy paths ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["import", "export", "cd"])
def test_valid_form_creates_a_new_request_with_a_call_reference(client, requester, kind):
    url, data = FORMS[kind]
    response = post_form(client, url, data())
    assert response.status_code == 302, field_errors_of(response)
    location = response.headers["Location"]
    match = re.fullmatch(r"/requests/(IEP-\d{4}-\d{6})\?submitted=1", location)
    assert match
    call_ref = match.group(1)
    page = client.get(location).get_data(as_text=True)
    assert "Request submitted" in page and call_ref in page
    req = db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))
    # A CD import starts on the CD round (issue 12.5), waiting for its CDs to be handed in.
    assert req.status.value == ("Awaiting Drop-off" if kind == "cd" else "New") and req.kind.value == kind
    assert req.requester_id == requester.id
    assert req.nhs_number == "9990000018" and req.s_number == "S1234567"
    assert [e.description for e in req.exams] == [data()["exams-0-description"]]
    # The request page shows everything submitted.
    assert "999 000 0018" in page and "SMITH, Margaret" in page and "12 Welford Road" in page
    # Listed under "My requests" with its status.
    mine = client.get("/requests").get_data(as_text=True)
    assert call_ref in mine and req.status.value in mine


def field_errors_of(response) -> list[str]:
    return re.findall(r'class="field-error" id="([^"]+)"', response.get_data(as_text=True))


def test_each_kind_keeps_its_own_fields(client, requester):
    post_form(client, "/requests/new/import", {**valid_import(), "priority": "Blue Light",
                                                "priority_reason": "Theatre at 14:00"})
    post_form(client, "/requests/new/export", valid_export())
    post_form(client, "/requests/new/cd", valid_cd())
    imp, exp, cd = db.session.scalars(sa.select(Request).order_by(Request.id)).all()
    assert (imp.priority.value, imp.priority_reason, imp.consultant) == ("Blue Light", "Theatre at 14:00", "Dr Ahmed")
    assert imp.institution is not None or imp.institution_name.startswith("Nottingham")
    assert (exp.site_contact_email, exp.priority_reason) == ("jane.rowe@kgh.nhs.uk", "MDT Referral")
    assert exp.required_by == local_today() + timedelta(days=7)
    assert (cd.cd_count, cd.drop_off_site, cd.internal_post_address) == (2, "LRI", "Ward 7, Leicester Royal Infirmary")
    assert cd.priority.value == "Standard"


def test_call_references_are_sequential_and_unique(client, requester):
    refs = []
    for n in range(3):
        # A different examination each time: the same one again would be warned about.
        response = post_form(client, "/requests/new/import", {**valid_import(), **other_exam(n)})
        refs.append(response.headers["Location"].split("/")[2].split("?")[0])
    year = local_today().year
    assert refs == [f"IEP-{year}-000001", f"IEP-{year}-000002", f"IEP-{year}-000003"]


def test_double_clicked_submit_makes_one_request(client, requester):
    page = client.get("/requests/new/import").get_data(as_text=True)
    key = re.search(r'name="submission_key" type="hidden" value="([^"]+)"', page).group(1)
    first = post_form(client, "/requests/new/import", {**valid_import(), "submission_key": key})
    second = post_form(client, "/requests/new/import", {**valid_import(), "submission_key": key})
    assert request_count() == 1
    assert second.status_code == 302
    assert second.headers["Location"].split("?")[0] == first.headers["Location"].split("?")[0]
    assert "already submitted as" in client.get(second.headers["Location"]).get_data(as_text=True)


def test_submission_key_survives_a_refused_submission(client, requester):
    page = client.get("/requests/new/import").get_data(as_text=True)
    key = re.search(r'name="submission_key" type="hidden" value="([^"]+)"', page).group(1)
    refused = post_form(client, "/requests/new/import", {**valid_import(), "family_name": "", "submission_key": key})
    assert f'value="{key}"' in refused.get_data(as_text=True)


def test_submission_and_views_are_audited_with_the_request(client, requester):
    response = post_form(client, "/requests/new/import", valid_import())
    client.get(response.headers["Location"])
    req = db.session.scalar(sa.select(Request))
    actions = db.session.execute(
        sa.select(AuditEvent.action, AuditEvent.user_id).where(AuditEvent.request_id == req.id).order_by(AuditEvent.id)
    ).all()
    assert actions == [("submit", requester.id), ("view", requester.id)]


# --- Validation: one broken field at a time --------------------------------------------

TODAY = local_today()
CASES = [
    # (id, form, changes, field id, message fragment)
    ("s_number_missing", "import", {"s_number": ""}, "s_number", "Enter the patient's S number"),
    ("s_number_malformed", "import", {"s_number": "S12345"}, "s_number", "letter S followed by 7 digits"),
    ("patient_not_on_pas", "import", {"s_number": "S9999999"}, "s_number",
     "No patient with this S number is registered"),
    ("nhs_wrong_check_digit", "import", {"nhs_number": "999 000 0019"}, "nhs_number", "check digit is wrong"),
    ("nhs_nine_digits", "export", {"nhs_number": "999000001"}, "nhs_number", "this has 9"),
    ("nhs_eleven_digits", "cd", {"nhs_number": "99900000181"}, "nhs_number", "this has 11"),
    ("nhs_check_digit_10", "import", {"nhs_number": "9990000000"}, "nhs_number", "check digit is wrong"),
    ("nhs_disagrees_with_pas", "import", {"nhs_number": "999 000 0026"}, "nhs_number",
     "does not match the one registered"),
    ("dob_disagrees_with_pas", "export", {"dob": "1948-03-15"}, "dob", "does not match the one registered"),
    ("family_name_disagrees_with_pas", "import", {"family_name": "Smyth"}, "family_name",
     "does not match the one registered"),
    ("given_name_disagrees_with_pas", "export", {"given_name": "Margot"}, "given_name",
     "This given name does not match the one registered for this S number"),  # issue 11.13
    ("nhs_never_issued", "import", {"nhs_number": "999 999 9999"}, "nhs_number", "never issued"),  # issue 11.11
    ("nhs_full_width_digits", "export",
     {"nhs_number": "\uff19\uff19\uff19 \uff10\uff10\uff10 \uff10\uff10\uff11\uff18"},
     "nhs_number", "only the digits 0-9; spaces and dashes are allowed"),
    ("everything_refused", "import", {"exams-0-description": "everything"}, "exams-0-description",
     "'all imaging'"),  # issue 11.12
    ("all_other_imaging_refused", "cd", {"exams-0-description": "all other imaging"}, "exams-0-description",
     "'all imaging'"),
    ("dob_missing", "cd", {"dob": ""}, "dob", "Enter the patient's date of birth"),
    ("dob_not_a_date", "import", {"dob": "31/02/1948"}, "dob", "Enter a date as DD/MM/YYYY"),
    ("family_name_missing", "import", {"family_name": ""}, "family_name", "family name"),
    ("given_name_missing", "export", {"given_name": "  "}, "given_name", "given name"),
    ("address_needed_without_nhs", "import", {"nhs_number": "", "address_line1": ""}, "address_line1",
     "only when a valid NHS number is given"),
    ("postcode_needed_without_nhs", "cd", {"nhs_number": "", "postcode": ""}, "postcode",
     "only when a valid NHS number is given"),
    ("address_needed_when_nhs_invalid", "import", {"nhs_number": "1234567890", "address_line1": ""}, "address_line1",
     "only when a valid NHS number is given"),
    ("exam_date_missing", "import", {"exams-0-exam_date": ""}, "exams-0-exam_date",
     "Enter the date of this examination"),
    ("exam_date_in_future", "export", {"exams-0-exam_date": (TODAY + timedelta(days=1)).isoformat()},
     "exams-0-exam_date", "cannot be in the future"),
    ("exam_before_birth", "import", {"exams-0-exam_date": "1940-01-01"}, "exams-0-exam_date",
     "before the patient's date of birth"),
    ("all_imaging_refused", "import", {"exams-0-description": "All imaging"}, "exams-0-description", "'all imaging'"),
    ("all_studies_refused", "export", {"exams-0-description": "all studies please"}, "exams-0-description",
     "'all studies'"),
    ("exam_description_missing", "import", {"exams-0-description": ""}, "exams-0-description",
     "Describe the examination"),
    ("cd_needs_description_or_code", "cd", {"exams-0-description": "", "exams-0-exam_code": ""}, "exams-0-description",
     "full study description or the CRIS exam code"),
    ("no_exam_lines_at_all", "import", {"exams-0-exam_date": "", "exams-0-description": "", "exams-0-exam_code": ""},
     "exams-0-exam_date", "State each examination with its date"),
    ("blue_light_needs_reason", "import", {"priority": "Blue Light", "priority_reason": ""}, "priority_reason",
     "Blue Light is for patients due in theatre"),
    ("unknown_priority_refused", "import", {"priority": "Whenever"}, "priority", "Not a valid choice"),
    ("needed_by_in_past", "import", {"required_by": (TODAY - timedelta(days=1)).isoformat()}, "required_by",
     "cannot be in the past"),
    ("required_by_missing_on_export", "export", {"required_by": ""}, "required_by",
     "Enter the date the studies are required by"),
    ("export_required_by_in_past", "export", {"required_by": "2020-01-01"}, "required_by", "cannot be in the past"),
    ("blue_light_export_needs_blue_light_reason", "export", {"priority": "Blue Light", "priority_reason": "Research"},
     "priority_reason", "emergency admission or surgery in the next 12 hours"),
    ("blue_light_reason_needs_blue_light", "export",
     {"priority_reason": "Blue Light – emergency admission or surgery in next 12 hours only"},
     "priority_reason", "choose Blue Light priority"),
    ("export_reason_missing", "export", {"priority_reason": ""}, "priority_reason",
     "Choose the reason for the priority"),
    ("export_reason_not_listed", "export", {"priority_reason": "Because"}, "priority_reason", "Not a valid choice"),
    ("site_email_invalid", "export", {"site_contact_email": "jane.rowe@"}, "site_contact_email", "valid e-mail"),
    ("site_phone_invalid", "export", {"site_contact_phone": "ring reception"}, "site_contact_phone",
     "telephone number"),
    ("site_contact_missing", "export", {"site_contact_name": ""}, "site_contact_name", "person receiving the images"),
    ("contact_email_invalid", "import", {"contact_email": "not-an-email"}, "contact_email", "valid e-mail"),
    ("contact_phone_missing", "cd", {"contact_phone": ""}, "contact_phone", "Enter a number we can call you on"),
    ("institution_missing", "import", {"institution_name": ""}, "institution_name",
     "hospital or trust the images come from"),
    ("clinician_missing", "import", {"requesting_clinician": ""}, "requesting_clinician", "requesting clinician"),
    ("consultant_missing", "import", {"consultant": ""}, "consultant", "consultant"),
    ("department_missing", "import", {"department": ""}, "department", "department"),
    ("cd_count_zero", "cd", {"cd_count": "0"}, "cd_count", "from 1 to 20"),
    ("cd_count_not_a_number", "cd", {"cd_count": "two"}, "cd_count", "whole number"),
    ("cd_count_missing", "cd", {"cd_count": ""}, "cd_count", "how many CDs"),
    ("drop_off_site_missing", "cd", {"drop_off_site": ""}, "drop_off_site", "where you will drop off"),
    ("drop_off_site_unknown", "cd", {"drop_off_site": "QMC"}, "drop_off_site", "Not a valid choice"),
    ("internal_post_missing", "cd", {"internal_post_address": ""}, "internal_post_address", "internal post address"),
]


@pytest.mark.parametrize(("kind", "changes", "field", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_field_is_refused_beside_the_field_and_nothing_is_saved(client, requester, kind, changes, field, message):
    url, data = FORMS[kind]
    submitted = {**data(), **changes}
    response = post_form(client, url, submitted)
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert message in field_error(page, field), f"errors on: {field_errors_of(response)}"
    assert "There is a problem with this form" in page  # the summary at the top
    assert request_count() == 0
    # What the user typed is kept, including the other fields and the wrong value.
    assert field_value(page, "contact_name") == submitted["contact_name"]
    if field in ("family_name", "s_number", "exams-0-description"):
        assert field_value(page, field) == submitted[field]
    if field == "nhs_number":
        assert field_value(page, field).replace(" ", "") == submitted[field].replace(" ", "")


def test_nhs_number_may_be_left_out_and_address_may_be_left_out_only_with_it(client, requester):
    without_address = {**valid_import(), "address_line1": "", "town": "", "postcode": ""}
    assert post_form(client, "/requests/new/import", without_address).status_code == 302
    without_nhs = {**valid_import(), **other_exam(1), "nhs_number": ""}
    assert post_form(client, "/requests/new/import", without_nhs).status_code == 302
    assert request_count() == 2


def test_free_text_is_escaped_on_the_request_page(client, requester):
    hostile = '<script>alert(1)</script><img src=x onerror=alert(2)>'
    response = post_form(client, "/requests/new/import", {**valid_import(), "comments": hostile,
                                                          "exams-0-description": "CT <b>head</b>"})
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "<b>head</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


# --- Exam lines: add and remove, with and without JavaScript ------------------------------


def test_add_exam_line_without_javascript_keeps_everything_and_saves_nothing(client, requester):
    data = {**valid_import(), "action": "add_exam", "family_name": "Smith-typed"}
    response = post_form(client, "/requests/new/import", data)
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert page.count('class="exam-line"') == 2
    assert field_value(page, "exams-0-description") == data["exams-0-description"]
    assert field_value(page, "family_name") == "Smith-typed"
    assert "There is a problem" not in page  # adding a line is not a submission
    assert request_count() == 0


def test_add_exam_line_with_htmx_returns_only_the_lines(client, requester):
    response = post_form(client, "/requests/new/import", {**valid_import(), "action": "add_exam"},
                         headers={"HX-Request": "true"})
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert page.lstrip().startswith("<fieldset") and 'id="exam-lines"' in page
    assert "<html" not in page
    assert page.count('class="exam-line"') == 2
    assert field_value(page, "exams-0-exam_code") == "CCAPC"
    assert "autofocus" in re.search(r'<input[^>]*id="exams-1-exam_date"[^>]*>', page).group(0)


def test_two_exam_lines_are_saved_in_order_and_blank_lines_ignored(client, requester):
    data = {
        **valid_import(),
        "exams-1-exam_date": "2025-05-01", "exams-1-description": "MRI head", "exams-1-exam_code": "mhead",
        "exams-2-exam_date": "", "exams-2-description": "", "exams-2-exam_code": "",
    }
    assert post_form(client, "/requests/new/import", data).status_code == 302
    req = db.session.scalar(sa.select(Request))
    assert [(e.description, e.exam_code) for e in req.exams] == [
        ("CT chest abdomen pelvis", "CCAPC"), ("MRI head", "MHEAD")
    ]


def test_remove_exam_line(client, requester):
    data = {**valid_import(), "exams-1-exam_date": "2025-05-01", "exams-1-description": "MRI head",
            "exams-1-exam_code": "", "action": "remove_exam:0"}
    page = post_form(client, "/requests/new/import", data).get_data(as_text=True)
    assert page.count('class="exam-line"') == 1
    assert field_value(page, "exams-0-description") == "MRI head"


# --- Who sees what -------------------------------------------------------------------


def test_requester_fetching_anothers_request_gets_403(app, client, requester, make_user):
    response = post_form(client, "/requests/new/import", valid_import())
    location = response.headers["Location"].split("?")[0]
    other = make_user("requester")
    stranger = app.test_client()
    post_form(stranger, "/login", {"email": other.email, "password": "correct-horse-9"})
    denied = stranger.get(location)
    assert denied.status_code == 403
    assert "does not give access" in denied.get_data(as_text=True)
    assert location.split("/")[-1] not in stranger.get("/requests").get_data(as_text=True)
    # The desk sees every request.
    analyst = make_user("analyst")
    desk = app.test_client()
    post_form(desk, "/login", {"email": analyst.email, "password": "correct-horse-9"})
    assert desk.get(location).status_code == 200


def test_unknown_call_reference_is_404(client, requester):
    assert client.get("/requests/IEP-2026-999999").status_code == 404


def test_my_requests_search_and_empty_state(client, requester):
    page = client.get("/requests").get_data(as_text=True)
    assert "You have not submitted any requests yet" in page
    response = post_form(client, "/requests/new/cd", valid_cd())
    call_ref = response.headers["Location"].split("/")[2].split("?")[0]
    # Searches are POSTed: a patient's name never appears in a URL or a server log.
    assert call_ref in post_form(client, "/requests", {"q": "smith"}).get_data(as_text=True)
    assert call_ref in post_form(client, "/requests", {"q": "S1234567"}).get_data(as_text=True)
    assert call_ref not in post_form(client, "/requests", {"q": "patel"}).get_data(as_text=True)
    fragment = post_form(client, "/requests", {"q": "nobody"}, headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "<html" not in fragment and "No request of yours matches" in fragment


def test_my_requests_pages_through_long_lists(client, requester):
    from app.intake import routes

    for n in range(routes.PAGE_SIZE + 2):
        post_form(client, "/requests/new/import", {**valid_import(), **other_exam(n)})
    first = client.get("/requests").get_data(as_text=True)
    assert "Page 1 of 2" in first and first.count("<tr>") == routes.PAGE_SIZE + 1  # + header row
    second = post_form(client, "/requests", {"q": "", "page": "2"}).get_data(as_text=True)
    assert "Page 2 of 2" in second and second.count("<tr>") == 2 + 1
    assert f"IEP-{local_today().year}-000001" in second  # oldest last


def test_forms_are_prefilled_with_the_signed_in_users_contact(client, requester):
    page = client.get("/requests/new/import").get_data(as_text=True)
    assert field_value(page, "contact_email") == requester.email
    assert field_value(page, "contact_phone") == requester.phone


def test_control_characters_in_any_field_are_dropped_not_a_server_error(client, login_as, pas_patients):
    """A NUL pasted into a form (PostgreSQL refuses it in text) is dropped with the other
    control characters before any view sees the form (app/web_request.py); line breaks stay."""
    login_as("requester")
    response = post_form(client, "/requests/new/import", {**valid_import(), "comments": "Line\x00 one\x07\r\nLine two",
                                                          "consultant": "Dr\x1b Ahmed"})
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    req = db.session.scalar(sa.select(Request))
    assert req.comments == "Line one\r\nLine two" and req.consultant == "Dr Ahmed"


def test_more_exam_lines_than_the_limit_are_refused_with_the_limit_and_every_line_kept(client, requester):
    """Issue 11.14: 25 lines were cut to 20 with no word; now refused, saying the limit."""
    data = valid_import()
    for n in range(25):
        data[f"exams-{n}-exam_date"] = "2025-06-10"
        data[f"exams-{n}-description"] = f"CT head line {n + 1}"
        data[f"exams-{n}-exam_code"] = ""
    response = post_form(client, "/requests/new/import", data)
    assert response.status_code == 422
    page = html.unescape(response.get_data(as_text=True))
    assert "A request takes at most 20 examination lines; this one has 25." in page
    assert all(f"CT head line {n + 1}" in page for n in range(25))  # what was typed is kept
    assert db.session.scalar(sa.select(sa.func.count(Request.id))) == 0
    for n in range(25, 20, -1):  # 20 lines go through
        for key in ("exam_date", "description", "exam_code"):
            data.pop(f"exams-{n - 1}-{key}")
    assert post_form(client, "/requests/new/import", data).status_code == 302
    assert len(db.session.scalar(sa.select(Request)).exams) == 20
