"""The same patient and examination asked for twice: the requester is warned on the form,
nothing is saved until they confirm, and the new request links to the earlier one."""

from __future__ import annotations

import html
import re
from datetime import date, timedelta

import pytest
import sqlalchemy as sa

from app.audit import AuditEvent
from app.extensions import db
from app.intake.duplicates import find_duplicate, same_exam
from app.requests.models import Request
from app.requests.statuses import Kind, Status
from app.timeutil import local_today
from tests.conftest import post_form
from tests.forms_data import valid_cd, valid_export, valid_import

IMPORT = "/requests/new/import"
CHECKBOX_LABEL = "Submit anyway: this is a new request for the same examination"


@pytest.fixture
def requester(login_as, pas_patients):
    return login_as("requester")


def submit(client, url: str, data: dict[str, str]) -> Request:
    response = post_form(client, url, data)
    assert response.status_code == 302, re.findall(r'class="field-error"[^>]*>(.*?)</p>',
                                                   response.get_data(as_text=True))
    call_ref = re.search(r"/requests/(IEP-\d{4}-\d{6})", response.headers["Location"]).group(1)
    return db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))


def request_count() -> int:
    return db.session.scalar(sa.select(sa.func.count(Request.id)))


def warning_text(page: str) -> str:
    match = re.search(r'<div class="duplicate-warning" id="duplicate-warning">(.*?)</div>\s*</div>', page, re.S)
    assert match, "no duplicate warning on the page"
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", match.group(1))).split())


def field_value(page: str, field_id: str) -> str:
    tag = re.search(rf'<input\b[^>]*\bid="{re.escape(field_id)}"[^>]*>', page)
    assert tag, f"no input {field_id}"
    value = re.search(r'\bvalue="([^"]*)"', tag.group(0))
    return html.unescape(value.group(1)) if value else ""


# --- On the form ---------------------------------------------------------------------------


def test_same_exam_again_is_warned_and_not_saved(client, requester):
    earlier = submit(client, IMPORT, valid_import())
    again = {**valid_import(), "family_name": "Smith", "comments": "Typed again"}
    response = post_form(client, IMPORT, again)
    page = response.get_data(as_text=True)
    assert response.status_code == 409
    assert request_count() == 1
    warning = warning_text(page)
    assert f"You already requested the same examination for this patient: {earlier.call_ref} (status: New)" in warning
    assert f'href="/requests/{earlier.call_ref}"' in page
    # Beside the exam lines, with the box to submit anyway, unticked.
    assert (page.index('id="exam-lines"') < page.index('id="duplicate-warning"')
            < page.index('id="requesting_clinician"'))
    box = re.search(r'<input[^>]*name="confirm_duplicate"[^>]*>', page).group(0)
    assert 'type="checkbox"' in box and "checked" not in box
    assert CHECKBOX_LABEL in page
    # A notice at the top says nothing was sent, and it is not an error summary.
    assert 'class="duplicate-summary" role="alert"' in page and 'href="#duplicate-warning"' in page
    assert "There is a problem with this form" not in page
    # Everything typed is kept; the patient as the register holds it, matched (issue 13.8).
    assert field_value(page, "family_name") == "SMITH"
    assert field_value(page, "exams-0-description") == again["exams-0-description"]
    assert field_value(page, "exams-0-exam_date") == again["exams-0-exam_date"]
    assert field_value(page, "consultant") == again["consultant"]
    assert "Typed again" in page


def test_confirmed_duplicate_is_saved_and_linked_to_the_earlier_request(client, requester):
    earlier = submit(client, IMPORT, valid_import())
    assert post_form(client, IMPORT, valid_import()).status_code == 409
    later = submit(client, IMPORT, {**valid_import(), "confirm_duplicate": "y"})
    assert later.duplicate_of_id == earlier.id and later.duplicate_of.call_ref == earlier.call_ref
    assert earlier.duplicate_of_id is None
    page = client.get(f"/requests/{later.call_ref}").get_data(as_text=True)
    assert "Same examination as" in page and f'href="/requests/{earlier.call_ref}"' in page
    detail = db.session.scalar(
        sa.select(AuditEvent.detail).where(AuditEvent.request_id == later.id, AuditEvent.action == "submit")
    )
    assert detail.endswith(f"same examination as {earlier.call_ref}")


def test_different_exam_date_is_not_a_duplicate(client, requester):
    submit(client, IMPORT, valid_import())
    other_day = (local_today() - timedelta(days=31)).isoformat()
    later = submit(client, IMPORT, {**valid_import(), "exams-0-exam_date": other_day})
    assert later.duplicate_of_id is None


def test_cancelled_earlier_request_is_not_a_duplicate(client, requester):
    earlier = submit(client, IMPORT, valid_import())
    earlier.status = Status.CANCELLED
    db.session.commit()
    later = submit(client, IMPORT, valid_import())
    assert later.duplicate_of_id is None


@pytest.mark.parametrize("status", [Status.ACCEPTED, Status.COMPLETED, Status.DECLINED, Status.FAILED])
def test_earlier_request_in_any_other_status_counts(client, requester, status):
    earlier = submit(client, IMPORT, valid_import())
    earlier.status = status
    db.session.commit()
    response = post_form(client, IMPORT, valid_import())
    assert response.status_code == 409
    assert f"(status: {status.value})" in warning_text(response.get_data(as_text=True))


def test_import_and_export_of_the_same_exam_are_not_duplicates(client, requester):
    submit(client, IMPORT, valid_import())
    exported = submit(client, "/requests/new/export", valid_export())
    assert exported.duplicate_of_id is None
    cd = submit(client, "/requests/new/cd", {**valid_cd(), "exams-0-description": "CT chest abdomen pelvis"})
    assert cd.duplicate_of_id is None


@pytest.mark.parametrize(
    ("description", "code"),
    [
        ("  ct   CHEST abdomen\tpelvis ", ""),
        ("CT CHEST ABDOMEN PELVIS", "XOTHER"),
    ],
    ids=["description_ignores_case_and_whitespace", "description_matches_whatever_the_code"],
)
def test_same_description_is_a_duplicate(client, requester, description, code):
    earlier = submit(client, IMPORT, valid_import())
    response = post_form(client, IMPORT,
                         {**valid_import(), "exams-0-description": description, "exams-0-exam_code": code})
    assert response.status_code == 409
    assert earlier.call_ref in warning_text(response.get_data(as_text=True))


def test_same_exam_code_is_a_duplicate_whatever_the_description(client, requester):
    earlier = submit(client, IMPORT, valid_import())  # CCAPC
    response = post_form(client, IMPORT,
                         {**valid_import(), "exams-0-description": "CT thorax", "exams-0-exam_code": "ccapc"})
    assert response.status_code == 409
    assert earlier.call_ref in warning_text(response.get_data(as_text=True))


def test_different_description_and_code_on_the_same_day_is_not_a_duplicate(client, requester):
    submit(client, IMPORT, valid_import())
    later = submit(client, IMPORT, {**valid_import(), "exams-0-description": "MRI head", "exams-0-exam_code": "MHEAD"})
    assert later.duplicate_of_id is None


def test_any_exam_line_can_be_the_duplicate(client, requester):
    earlier = submit(client, IMPORT, valid_import())
    data = {
        **valid_import(),
        "exams-0-exam_date": (local_today() - timedelta(days=3)).isoformat(),
        "exams-0-description": "MRI head",
        "exams-0-exam_code": "",
        "exams-1-exam_date": valid_import()["exams-0-exam_date"],
        "exams-1-description": "CT chest, abdomen and pelvis",
        "exams-1-exam_code": "CCAPC",
    }
    response = post_form(client, IMPORT, data)
    assert response.status_code == 409
    assert earlier.call_ref in warning_text(response.get_data(as_text=True))


def test_another_patient_is_not_a_duplicate(client, requester):
    submit(client, IMPORT, valid_import())
    patel = {
        **valid_import(), "s_number": "S7654321", "nhs_number": "999 000 0026", "family_name": "Patel",
        "given_name": "Ravi", "dob": "1975-11-02",
    }
    assert submit(client, IMPORT, patel).duplicate_of_id is None


def test_cd_with_only_an_exam_code_matches_on_the_code(client, requester):
    cd = {**valid_cd(), "exams-0-description": "", "exams-0-exam_code": "MLSPI"}
    earlier = submit(client, "/requests/new/cd", cd)
    response = post_form(client, "/requests/new/cd", {**cd, "exams-0-exam_code": "mlspi"})
    assert response.status_code == 409
    assert earlier.call_ref in warning_text(response.get_data(as_text=True))
    # No code and another description: a different study.
    assert submit(client, "/requests/new/cd", {**cd, "exams-0-exam_code": "", "exams-0-description": "MRI knee"})


# --- Someone else's earlier request --------------------------------------------------------


def test_someone_elses_request_shows_its_call_reference_only(app, client, requester, make_user):
    earlier = submit(client, IMPORT, {**valid_import(), "contact_name": "Dr Imogen Earlier"})
    other = make_user("requester")
    colleague = app.test_client()
    post_form(colleague, "/login", {"email": other.email, "password": "correct-horse-9"})
    response = post_form(colleague, IMPORT, valid_import())
    page = response.get_data(as_text=True)
    assert response.status_code == 409
    warning = warning_text(page)
    assert f"The same examination was already requested by someone else (call reference {earlier.call_ref})." in warning
    # Neither the other requester's name, nor the request's status, nor a link they cannot open.
    assert "Dr Imogen Earlier" not in page and requester.email not in page
    assert "status:" not in warning
    assert f'href="/requests/{earlier.call_ref}"' not in page
    # Submitted anyway: the link is kept, shown as the call reference only.
    later = submit(colleague, IMPORT, {**valid_import(), "confirm_duplicate": "y"})
    assert later.duplicate_of_id == earlier.id
    shown = colleague.get(f"/requests/{later.call_ref}").get_data(as_text=True)
    assert f"{earlier.call_ref} (requested by someone else)" in shown
    assert f'href="/requests/{earlier.call_ref}"' not in shown and "Dr Imogen Earlier" not in shown


def test_the_desk_sees_the_earlier_requests_status_and_link(app, client, requester, make_user):
    earlier = submit(client, IMPORT, valid_import())
    analyst = make_user("analyst")
    desk = app.test_client()
    post_form(desk, "/login", {"email": analyst.email, "password": "correct-horse-9"})
    page = post_form(desk, IMPORT, valid_import()).get_data(as_text=True)
    assert f"{earlier.call_ref} (status: New)" in warning_text(page)
    assert f'href="/requests/{earlier.call_ref}"' in page


# --- The rule itself ------------------------------------------------------------------------

DAY = date(2025, 11, 3)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ((DAY, "CT head", ""), (DAY, "ct  head", ""), True),
        ((DAY, "CT head", "CHEAD"), (DAY, "Head CT", "chead"), True),
        ((DAY, "CT head", ""), (DAY + timedelta(days=1), "CT head", ""), False),
        ((DAY, "", ""), (DAY, "", ""), False),
        ((DAY, "", "CHEAD"), (DAY, "", "CHEADC"), False),
        ((DAY, "CT head", "CHEAD"), (DAY, "CT chest", "CCHEST"), False),
    ],
    ids=["description_case_whitespace", "code_case", "other_day", "blank_never_matches_blank",
         "other_code", "other_everything"],
)
def test_same_exam_rule(a, b, same):
    assert same_exam(a, b) is same and same_exam(b, a) is same


def test_find_duplicate_with_no_dated_lines_finds_nothing(app):
    assert find_duplicate("S1234567", [], Kind.IMPORT) is None
    assert find_duplicate("", [(DAY, "CT head", "")], Kind.IMPORT) is None


def test_exam_already_on_ris_from_a_cd_warns_an_import(client, login_as, pas_patients):
    """Guideline 2.3 f: an examination imported once (here from a CD) is on RIS already."""
    from app.transfers.models import RisEntry

    login_as("requester")
    cd = {**valid_cd(), "exams-0-exam_code": "CCAPC", "exams-0-description": "CT from CD"}
    assert post_form(client, "/requests/new/cd", cd).status_code == 302
    cd_request = db.session.scalar(sa.select(Request))
    db.session.add(RisEntry(request_id=cd_request.id, study_uid="1.2.3.4", exam_code="CCAPC",
                            event_date=cd_request.exams[0].exam_date, s_number="S1234567"))
    db.session.commit()
    response = post_form(client, "/requests/new/import", valid_import())
    assert response.status_code == 409
    assert cd_request.call_ref in response.get_data(as_text=True)
