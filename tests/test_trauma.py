"""The trauma screen (issue 10; guideline 2.8, Appendix 4) through the web client, with a
real Orthanc as the local PACS: who reaches it, finding and checking the patient, the study
list, the report check, what a Send makes, and how the desk sees it. The transfer itself,
through the worker pool to a real NUH Orthanc, is tests/test_trauma_pool.py."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from pydicom import dcmread
from rq import Queue

from app.dicom import scu
from app.dicom.synth import make_study
from app.extensions import db, redis_conn
from app.requests.models import Request
from app.requests.statuses import Kind, Priority, Status
from app.timeutil import utcnow
from app.transfers.cli import upsert_node
from app.transfers.models import Direction, Transfer, TransferState
from tests.conftest import csrf_token, post_form
from tests.dicom_peers import OUR_AE, QUICK, free_port
from tests.forms_data import valid_export

SMITH = {"s_number": "S1234567", "nhs_number": "999 000 0018"}
# (date, modality, description, accession, instances): three of SMITH's, one of PATEL's.
STUDIES = [
    ("20261203", "CT", "CT HEAD", "ACC1001", 3),
    ("20261204", "CT", "CT CHEST ABDOMEN PELVIS", "ACC1002", 4),
    ("20250610", "CR", "XR CHEST", "ACC0900", 1),
]


@pytest.fixture(scope="module")
def trauma_pacs(orthanc_factory, gateway_port, tmp_path_factory):
    """A local PACS (Orthanc) holding SMITH's three studies and one of PATEL's."""
    pacs = orthanc_factory(aet="UHLPACS", modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)})
    folder = tmp_path_factory.mktemp("trauma-studies")
    uids = {}
    for n, (day, modality, description, accession, count) in enumerate(STUDIES):
        files = make_study(folder / str(n), patient_id="S1234567", patient_name="SMITH^MARGARET",
                           birth_date="19480314", study_date=day, modality=modality, description=description,
                           accession=accession, n_per_series=count, rows=32, cols=32)
        assert scu.send_files(pacs.node, files, config=QUICK).ok
        uids[description] = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    other = make_study(folder / "patel", patient_id="S7654321", patient_name="PATEL^RAVI", birth_date="19751102",
                       study_date="20261204", description="CT SPINE", accession="ACC2000", rows=32, cols=32)
    assert scu.send_files(pacs.node, other, config=QUICK).ok
    uids["PATEL"] = str(dcmread(other[0], stop_before_pixels=True).StudyInstanceUID)
    pacs.study_uids = uids
    return pacs


@pytest.fixture
def nodes(app, trauma_pacs):
    """The local PACS and the NUH node (nothing listens there: these tests send nothing)."""
    upsert_node("UHLPACSWFM01", trauma_pacs.node.ae_title, "127.0.0.1", trauma_pacs.node.port, "local_pacs")
    nuh = upsert_node("NUH Radiology PACS", "NUHPACS", "127.0.0.1", free_port(), "remote",
                      "Nottingham University Hospitals NHS Trust")
    db.session.commit()
    Queue("outbound-bluelight", connection=redis_conn()).empty()
    return nuh


def _text(response) -> str:  # noqa: ANN001
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.get_data(as_text=True))))


def _hidden(response, name: str) -> str:  # noqa: ANN001
    match = re.search(rf'name="{name}"[^>]*value="([^"]*)"', response.get_data(as_text=True))
    assert match, f"no {name} on the page"
    return html.unescape(match.group(1))


def _listed(response) -> list[str]:  # noqa: ANN001
    return re.findall(r'type="checkbox" name="study_uid" value="([^"]+)"', response.get_data(as_text=True))


def step(client, action: str, headers=None, **fields):  # noqa: ANN001, ANN003, ANN201
    """POST one step of the screen, as its form does (past step 10 the form carries
    patient_checked=1)."""
    if action in ("filter", "review", "send"):
        fields.setdefault("patient_checked", "1")
    return client.post("/trauma", data={"csrf_token": csrf_token(client, "/trauma"), "action": action, **fields},
                       headers=headers or {})


def to_studies(client, patient: dict[str, str] = SMITH):  # noqa: ANN001, ANN201
    found = step(client, "find", **patient)
    assert found.status_code == 200, _text(found)
    return step(client, "confirm", **patient)


# --- who reaches it --------------------------------------------------------------------------


@pytest.mark.parametrize("role, status", [("radiologist", 200), ("admin", 200), ("requester", 403),
                                          ("analyst", 403), ("am_radiology", 403)])
def test_only_radiologists_and_admin_reach_the_trauma_screen(client, login_as, pas_patients, role, status):
    login_as(role)
    assert client.get("/trauma").status_code == status
    token = csrf_token(client, "/requests")  # every signed-in role has this page
    assert client.post("/trauma", data={"csrf_token": token, "action": "find", **SMITH}).status_code == status


def test_signed_out_the_trauma_screen_asks_for_sign_in(client):
    response = client.get("/trauma")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_a_radiologist_lands_on_the_trauma_screen_which_says_what_it_is_for_and_never_closes(client, make_user):
    user = make_user("radiologist")
    signed_in = post_form(client, "/login", {"email": user.email, "password": "correct-horse-9"})
    page = client.get(signed_in.headers["Location"], follow_redirects=True)
    assert page.request.path == "/trauma"
    text = _text(page)
    assert "For ED trauma patients being transferred to Nottingham (QMC) only" in text
    assert "The trauma route never closes" in text
    assert "You have not sent a trauma transfer yet." in text


# --- the patient (Appendix 4 steps 8-10) --------------------------------------------------------


def test_the_patient_is_shown_for_checking_before_anything_else(client, login_as, pas_patients, nodes):
    login_as("radiologist")
    found = step(client, "find", **SMITH)
    text = _text(found)
    assert "SMITH, Margaret" in text and "14/03/1948" in text and "S1234567" in text
    assert "Is this the right patient?" in text
    assert "CT HEAD" not in text  # no studies until the patient is confirmed


@pytest.mark.parametrize("fields, field, message", [
    ({"s_number": "S9999999", "nhs_number": "999 000 0018"}, "s_number", "No patient with this S number"),
    ({"s_number": "12345", "nhs_number": ""}, "s_number", "S followed by 7 digits"),
    ({"s_number": "S1234567", "nhs_number": "999 000 0026"}, "nhs_number", "not the one registered"),
    ({"s_number": "S1234567", "nhs_number": "999 000 0019"}, "nhs_number", "check digit is wrong"),
    ({"s_number": "S1234567", "nhs_number": ""}, "no_nhs_reason", "say why there is none"),
])
def test_a_wrong_patient_is_refused_naming_the_field_and_keeping_what_was_typed(
    client, login_as, pas_patients, nodes, fields, field, message
):
    login_as("radiologist")
    response = step(client, "find", **fields)
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert message in _text(response)
    assert f'id="{field}-error"' in page
    assert f'value="{fields["s_number"]}"' in page  # what was typed is kept
    assert db.session.scalar(sa.select(sa.func.count(Request.id))) == 0


def test_without_an_nhs_number_the_reason_goes_on_the_record(client, login_as, pas_patients, nodes):
    login_as("radiologist")
    patient = {"s_number": "S1234567", "nhs_number": "", "no_nhs_reason": "Unidentified on arrival in ED"}
    studies = to_studies(client, patient)
    assert "None given: Unidentified on arrival in ED" in _text(studies)
    uid = _listed(studies)[0]
    review = step(client, "review", **patient, studies_token=_hidden(studies, "studies_token"), study_uid=uid)
    sent = step(client, "send", **patient, studies_token=_hidden(studies, "studies_token"), study_uid=uid,
                submission_key=_hidden(review, "submission_key"))
    assert sent.status_code == 302
    req = db.session.scalar(sa.select(Request))
    assert req.nhs_number == "" and req.no_nhs_reason == "Unidentified on arrival in ED"


# --- the studies (steps 11-12) -------------------------------------------------------------------


def test_the_patients_studies_are_listed_newest_first_and_no_one_elses(client, login_as, pas_patients, nodes,
                                                                        trauma_pacs):
    login_as("radiologist")
    studies = to_studies(client)
    uids = trauma_pacs.study_uids
    assert _listed(studies) == [uids["CT CHEST ABDOMEN PELVIS"], uids["CT HEAD"], uids["XR CHEST"]]
    assert uids["PATEL"] not in studies.get_data(as_text=True)
    text = _text(studies)
    assert "04/12/2026" in text and "ACC1002" in text
    assert "NUH Radiology PACS" in text and "Clinical emergency" in text


def test_filters_narrow_the_list_and_ticked_studies_they_hide_stay_ticked(client, login_as, pas_patients, nodes,
                                                                           trauma_pacs):
    login_as("radiologist")
    studies = to_studies(client)
    uids = trauma_pacs.study_uids
    filtered = step(client, "filter", **SMITH, studies_token=_hidden(studies, "studies_token"), modality="cr",
                    study_uid=[uids["CT HEAD"]])
    assert _listed(filtered) == [uids["XR CHEST"]]
    assert "Also ticked, hidden by the filters: CT HEAD, 03/12/2026" in _text(filtered)
    by_date = step(client, "filter", **SMITH, studies_token=_hidden(filtered, "studies_token"),
                   date_from="04/12/2026", date_to="2026-12-04")
    assert _listed(by_date) == [uids["CT CHEST ABDOMEN PELVIS"]]
    backwards = step(client, "filter", **SMITH, studies_token=_hidden(by_date, "studies_token"),
                     date_from="2026-12-04", date_to="2026-12-01")
    assert "before “Exam date from”" in _text(backwards)


def test_a_study_the_screen_did_not_list_for_this_patient_cannot_be_sent(client, login_as, pas_patients, nodes,
                                                                          trauma_pacs):
    login_as("radiologist")
    studies = to_studies(client)
    token = _hidden(studies, "studies_token")
    # Another patient's study, slipped into the form: not on the signed list, so not ticked.
    response = step(client, "review", **SMITH, studies_token=token, study_uid=[trauma_pacs.study_uids["PATEL"]])
    assert response.status_code == 422 and "Tick at least one study" in _text(response)
    # A token made for SMITH does not list studies for PATEL.
    patel = {"s_number": "S7654321", "nhs_number": "999 000 0026"}
    response = step(client, "review", **patel, studies_token=token,
                    study_uid=[trauma_pacs.study_uids["CT HEAD"]])
    assert "The list of studies was out of date" in _text(response)
    response = step(client, "review", **SMITH, studies_token=token[:-4] + "AAAA",
                    study_uid=[trauma_pacs.study_uids["CT HEAD"]])
    assert "The list of studies was out of date" in _text(response)
    assert db.session.scalar(sa.select(sa.func.count(Request.id))) == 0


def test_local_pacs_down_says_so_and_points_to_a_disk(client, login_as, pas_patients, nodes):
    upsert_node("UHLPACSWFM01", "UHLPACS", "127.0.0.1", free_port(), "local_pacs")
    db.session.commit()
    login_as("radiologist")
    studies = to_studies(client)
    text = _text(studies)
    assert "The local PACS did not answer" in text and "hardcopy disk from the modality" in text


# --- the report and the Send (steps 13-16) ---------------------------------------------------------


def _review(client, trauma_pacs, report: str = ""):  # noqa: ANN001, ANN202
    studies = to_studies(client)
    picked = [trauma_pacs.study_uids["CT HEAD"], trauma_pacs.study_uids["CT CHEST ABDOMEN PELVIS"]]
    fields = {**SMITH, "studies_token": _hidden(studies, "studies_token"), "study_uid": picked,
              "report_text": report}
    review = step(client, "review", **fields)
    assert review.status_code == 200, _text(review)
    return review, {**fields, "submission_key": _hidden(review, "submission_key")}


def test_the_report_is_shown_back_escaped_and_must_be_ticked_as_checked(client, login_as, pas_patients, nodes,
                                                                          trauma_pacs):
    login_as("radiologist")
    report = "CT head: <b>no</b> acute haemorrhage.\nImpression: & normal."
    review, fields = _review(client, trauma_pacs, report)
    page = review.get_data(as_text=True)
    assert "CT head: &lt;b&gt;no&lt;/b&gt; acute haemorrhage." in page and "<b>no</b>" not in page
    refused = step(client, "send", **fields)
    assert refused.status_code == 422
    assert "tick the box to say it is the right one" in _text(refused)
    assert db.session.scalar(sa.select(sa.func.count(Request.id))) == 0
    unsaid = step(client, "send", **fields, report_checked="y")  # two studies: which one is it about?
    assert unsaid.status_code == 422 and "Choose the study the report is about" in _text(unsaid)
    head = trauma_pacs.study_uids["CT HEAD"]
    sent = step(client, "send", **fields, report_checked="y", report_study=head)
    assert sent.status_code == 302
    transfer = db.session.scalar(sa.select(Transfer))
    assert transfer.report_text == report
    assert transfer.study_uids[0] == head  # the engine files the report in the first study


def test_send_makes_one_trauma_request_and_a_blue_light_transfer_to_nuh_on_its_own_lane(
    client, login_as, pas_patients, nodes, trauma_pacs
):
    user = login_as("radiologist")
    _review_page, fields = _review(client, trauma_pacs)
    sent = step(client, "send", **fields)
    again = step(client, "send", **fields)  # a double click: the same request, not two
    assert sent.status_code == 302 and again.headers["Location"] == sent.headers["Location"]
    req = db.session.scalar(sa.select(Request))
    assert db.session.scalar(sa.select(sa.func.count(Request.id))) == 1
    assert sent.headers["Location"] == f"/trauma/{req.call_ref}"
    assert req.kind == Kind.TRAUMA and req.priority == Priority.BLUE_LIGHT
    assert req.requester_id == user.id and req.status == Status.DOWNLOAD_REQUEST
    assert req.institution_name == "Nottingham University Hospitals NHS Trust"
    assert [e.description for e in req.exams] == ["CT CHEST ABDOMEN PELVIS, 04/12/2026", "CT HEAD, 03/12/2026"]
    transfer = db.session.scalar(sa.select(Transfer))
    assert transfer.direction == Direction.OUTBOUND and transfer.priority == Priority.BLUE_LIGHT
    assert transfer.dest_node_id == nodes.id and transfer.state == TransferState.QUEUED
    assert set(transfer.study_uids) == {trauma_pacs.study_uids["CT HEAD"],
                                        trauma_pacs.study_uids["CT CHEST ABDOMEN PELVIS"]}
    assert Queue("outbound-bluelight", connection=redis_conn()).job_ids == [transfer.job_id]
    tracker = client.get(sent.headers["Location"])
    assert tracker.status_code == 200 and "Queued in the Blue Light lane" in _text(tracker)


def test_with_redis_down_the_tracker_says_saved_not_queued_never_queued_in_the_lane(
    client, login_as, pas_patients, nodes, trauma_pacs, monkeypatch, tmp_path
):
    """Issue 11.16: no job exists, so the tracker must not say "Queued in the Blue Light lane"."""
    from redis import Redis

    from app.transfers import service as transfers

    dead = Redis(unix_socket_path=str(tmp_path / "no-redis.sock"), socket_connect_timeout=0.5)
    monkeypatch.setattr(transfers, "queue", lambda name: Queue(name, connection=dead))
    login_as("radiologist")
    _review_page, fields = _review(client, trauma_pacs)
    sent = step(client, "send", **fields)
    assert sent.status_code == 302
    transfer = db.session.scalar(sa.select(Transfer))
    assert transfer.state == TransferState.QUEUED and transfer.job_id == ""
    text = _text(client.get(sent.headers["Location"]))
    assert "Queued in the Blue Light lane" not in text
    assert "Saved, not queued yet: the transfer queue is not answering" in text
    assert "goes into the Blue Light lane by itself as soon as the queue is back" in text
    assert "If the images are needed now, burn a disk" in text


def test_without_the_nuh_node_the_screen_says_so_and_sends_nothing(client, login_as, pas_patients, trauma_pacs):
    upsert_node("UHLPACSWFM01", trauma_pacs.node.ae_title, "127.0.0.1", trauma_pacs.node.port, "local_pacs")
    db.session.commit()
    login_as("radiologist")
    assert "NUH Radiology PACS is not set up on this desk" in _text(client.get("/trauma"))
    _review_page, fields = _review(client, trauma_pacs)
    refused = step(client, "send", **fields)
    assert refused.status_code == 422 and "is not in the node register" in _text(refused)
    assert db.session.scalar(sa.select(sa.func.count(Request.id))) == 0


# --- who sees the request; the desk ------------------------------------------------------------------


def _sent(client, trauma_pacs, **extra: str) -> Request:  # noqa: ANN001
    _review_page, fields = _review(client, trauma_pacs)
    sent = step(client, "send", **fields, **extra)
    assert sent.status_code == 302
    return db.session.scalar(sa.select(Request).where(Request.call_ref == sent.headers["Location"].rsplit("/", 1)[1]))


def test_a_radiologist_sees_their_own_trauma_requests_and_no_one_elses(client, login_as, make_user, pas_patients,
                                                                       nodes, trauma_pacs):
    login_as("requester")
    export = post_form(client, "/requests/new/export", valid_export())
    export_ref = export.headers["Location"].split("/")[2].split("?")[0]
    client.post("/logout", data={"csrf_token": csrf_token(client, "/requests")})
    login_as("radiologist")
    theirs = _sent(client, trauma_pacs)
    client.post("/logout", data={"csrf_token": csrf_token(client, "/trauma")})
    login_as("radiologist")
    mine = _sent(client, trauma_pacs, send_again="y")  # the same studies, within the day
    assert client.get(f"/trauma/{mine.call_ref}").status_code == 200
    request_page = client.get(f"/requests/{mine.call_ref}")
    assert request_page.status_code == 200 and "Follow the trauma transfer" in _text(request_page)
    assert "form.pdf" not in request_page.get_data(as_text=True)  # Appendix 4 has no form
    assert mine.call_ref in _text(client.get("/trauma"))
    assert theirs.call_ref not in _text(client.get("/trauma"))
    for url in (f"/trauma/{theirs.call_ref}", f"/requests/{theirs.call_ref}", f"/trauma/{theirs.call_ref}/status",
                f"/requests/{export_ref}"):
        assert client.get(url).status_code == 403, url
    transfer = db.session.scalar(sa.select(Transfer).where(Transfer.request_id == theirs.id))
    assert client.get(f"/transfers/{transfer.id}").status_code == 403
    assert client.get("/desk").status_code == 403


def _desk_tab(client, tab: str):  # noqa: ANN001, ANN202
    return post_form(client, "/desk", {"tab_choice": tab}, headers={"HX-Request": "true"}).get_data(as_text=True)


def test_the_desk_pins_a_trauma_transfer_with_its_four_hour_clock(client, login_as, pas_patients, nodes,
                                                                  trauma_pacs):
    login_as("radiologist")
    req = _sent(client, trauma_pacs)
    client.post("/logout", data={"csrf_token": csrf_token(client, "/trauma")})
    login_as("requester")
    post_form(client, "/requests/new/export", valid_export())  # a newer standard request
    client.post("/logout", data={"csrf_token": csrf_token(client, "/requests")})
    login_as("analyst")
    export = db.session.scalar(sa.select(Request).where(Request.kind == Kind.EXPORT))
    export.status = Status.DOWNLOAD_REQUEST
    db.session.commit()
    page = _desk_tab(client, "progress")
    rows = re.findall(r'<tr id="row-(IEP-\d{4}-\d{6})"[^>]*class="([^"]*)"', page)
    assert [ref for ref, _css in rows] == [req.call_ref, export.call_ref]  # pinned above the newer one
    assert "blue-light-row" in rows[0][1]
    trauma_row = page[page.index(f'id="row-{req.call_ref}"'):page.index(f'id="row-{export.call_ref}"')]
    assert "Trauma transfer" in trauma_row and re.search(r"[34] h \d+ min left", trauma_row)
    # The desk opens it from the queue: the trauma tracker is there for the desk too.
    assert client.get(f"/trauma/{req.call_ref}").status_code == 200


def test_a_failing_blue_light_transfer_is_in_action_required_while_it_retries(client, login_as, pas_patients,
                                                                             nodes, trauma_pacs):
    login_as("radiologist")
    req = _sent(client, trauma_pacs)
    client.post("/logout", data={"csrf_token": csrf_token(client, "/trauma")})
    login_as("analyst")
    assert f"row-{req.call_ref}" not in _desk_tab(client, "action")
    transfer = db.session.scalar(sa.select(Transfer))
    transfer.last_error = "NUH Radiology PACS refused the connection. Trying again in 5 s (attempt 1 of 5)."
    transfer.not_before = utcnow() + timedelta(seconds=5)
    db.session.commit()
    assert f"row-{req.call_ref}" in _desk_tab(client, "action")


def test_a_second_send_of_the_same_studies_within_a_day_asks_first(client, login_as, pas_patients, nodes,
                                                                   trauma_pacs):
    login_as("radiologist")
    first = _sent(client, trauma_pacs)
    review, fields = _review(client, trauma_pacs)  # the back button, or a colleague
    assert f"{first.call_ref}" in _text(review) and "went to NUH in the last 24 hours" in _text(review)
    refused = step(client, "send", **fields)
    assert refused.status_code == 422 and "tick the box to send them again" in _text(refused)
    assert db.session.scalar(sa.select(sa.func.count(Request.id))) == 1
    assert step(client, "send", **fields, send_again="y").status_code == 302
    assert db.session.scalar(sa.select(sa.func.count(Request.id))) == 2


@pytest.mark.parametrize("key", ["", "not-a-key", "x" * 80])
def test_a_send_without_the_key_the_review_made_sends_nothing_and_shows_the_check_again(
    client, login_as, pas_patients, nodes, trauma_pacs, key
):
    login_as("radiologist")
    _review_page, fields = _review(client, trauma_pacs)
    response = step(client, "send", **{**fields, "submission_key": key})
    assert response.status_code == 422 and "press Send again" in _text(response)
    assert db.session.scalar(sa.select(sa.func.count(Request.id))) == 0
    assert step(client, "send", **{**fields, "submission_key": _hidden(response, "submission_key")}).status_code == 302


def test_the_patient_check_cannot_be_skipped(client, login_as, pas_patients, nodes, trauma_pacs):
    login_as("radiologist")
    _review_page, fields = _review(client, trauma_pacs)
    skipped = step(client, "send", **{**fields, "patient_checked": ""})
    assert skipped.status_code == 422 and "Is this the right patient?" in _text(skipped)
    assert db.session.scalar(sa.select(sa.func.count(Request.id))) == 0


def test_an_unknown_step_is_refused(client, login_as, pas_patients, nodes):
    login_as("radiologist")
    assert step(client, "delete", **SMITH).status_code == 400


def test_control_characters_in_pasted_text_are_dropped_not_stored(client, login_as, pas_patients, nodes,
                                                                  trauma_pacs):
    login_as("radiologist")
    patient = {"s_number": "S1234567", "nhs_number": "", "no_nhs_reason": "Unknown\x00 on arrival"}
    studies = to_studies(client, patient)
    uid = _listed(studies)[0]
    fields = {**patient, "studies_token": _hidden(studies, "studies_token"), "study_uid": uid,
              "report_text": "Line one\x00\x07\nLine two"}
    review = step(client, "review", **fields)
    sent = step(client, "send", **fields, submission_key=_hidden(review, "submission_key"), report_checked="y")
    assert sent.status_code == 302
    req = db.session.scalar(sa.select(Request))
    assert req.no_nhs_reason == "Unknown on arrival"
    assert db.session.scalar(sa.select(Transfer.report_text)) == "Line one\nLine two"


def test_without_an_nhs_number_on_the_register_a_typed_one_is_not_searched(client, login_as, pas_patients, nodes,
                                                                         trauma_pacs):
    """S0000003 has no NHS number on the register: a typed one (valid, but unchecked) must
    not pull another patient's studies into the list."""
    login_as("radiologist")
    studies = to_studies(client, {"s_number": "S0000003", "nhs_number": "999 000 0018"})
    assert studies.status_code == 200 and _listed(studies) == []
    assert "The local PACS has no studies for S0000003" in _text(studies)


def test_each_listed_study_says_whom_the_pacs_files_it_under(client, login_as, pas_patients, nodes, trauma_pacs):
    login_as("radiologist")
    assert "SMITH^MARGARET, S1234567, born 14/03/1948" in _text(to_studies(client))


def test_htmx_steps_answer_with_the_fragment_and_send_with_hx_redirect(client, login_as, pas_patients, nodes,
                                                                       trauma_pacs):
    login_as("radiologist")
    hx = {"HX-Request": "true"}
    refused = step(client, "find", headers=hx, s_number="S9999999", nhs_number="")
    assert refused.status_code == 422 and refused.get_data(as_text=True).lstrip().startswith("<div id=\"trauma-flow\">")
    assert "<html" not in refused.get_data(as_text=True)
    _review_page, fields = _review(client, trauma_pacs)
    sent = step(client, "send", headers=hx, **fields, report_study=fields["study_uid"][0])
    req = db.session.scalar(sa.select(Request))
    assert sent.status_code == 200 and sent.headers["HX-Redirect"] == f"/trauma/{req.call_ref}"
    fragment = client.get(f"/trauma/{req.call_ref}/status", headers=hx)
    assert fragment.get_data(as_text=True).lstrip().startswith("<section id=\"trauma-status\"")
    assert 'hx-trigger="every 2s"' in fragment.get_data(as_text=True)  # still queued: it polls
    plain = client.get(f"/trauma/{req.call_ref}/status")
    assert plain.status_code == 302 and plain.headers["Location"] == f"/trauma/{req.call_ref}"


def test_a_blue_light_transfer_no_worker_takes_within_a_minute_says_burn_a_disk_and_needs_the_desk(
    client, login_as, pas_patients, nodes, trauma_pacs
):
    login_as("radiologist")
    req = _sent(client, trauma_pacs)
    assert "Queued in the Blue Light lane" in _text(client.get(f"/trauma/{req.call_ref}"))
    transfer = db.session.scalar(sa.select(Transfer))
    transfer.created_at = utcnow() - timedelta(seconds=90)  # no pool ran it: nothing took it
    db.session.commit()
    tracker = _text(client.get(f"/trauma/{req.call_ref}"))
    assert "Not started: no worker has taken this transfer" in tracker
    assert "If the images are needed now, burn a disk" in tracker
    client.post("/logout", data={"csrf_token": csrf_token(client, "/trauma")})
    login_as("analyst")
    assert f"row-{req.call_ref}" in _desk_tab(client, "action")
