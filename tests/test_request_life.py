"""The request's life after the forms (issue 13.5-7): the sent Delivered notice completes
the request; a desk message reaches the requester by e-mail; Awaiting Details says what is
missing; the requester corrects their request while details are awaited, and cancels it
before the desk accepts it.

Mail goes through the real outbox, a real RQ worker (in this process, burst mode, or the
`worker.py` pool in its own processes) and a real SMTP server (tests/test_mail.py's).
"""

from __future__ import annotations

import re
import signal
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app import audit
from app.audit import AuditEvent
from app.auth.models import User
from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import Status
from app.timeutil import freeze, utcnow
from app.transfers import jobs as transfer_jobs
from app.transfers.models import InboundStudy
from app.workflow import mail, notices
from app.workflow.machine import TransitionRefused, transition
from app.workflow.models import Message, MessageKind, OutboxStatus
from tests.conftest import csrf_token, post_form
from tests.forms_data import valid_cd, valid_export, valid_import
from tests.pool import kill_pool, start_pool, wait_for
from tests.test_mail import (  # noqa: F401 - fixtures
    IMPORT_TO_DELIVERED,
    REQUESTER_MAIL,
    T0,
    analyst,
    maintenance,
    move,
    outbox,
    requester,
    run_jobs,
    smtp,
    submit,
)

S = Status
NOTE = "Which hospital did the CT? The form names two."


def reload(req: Request) -> Request:
    db.session.expire_all()
    return db.session.get_one(Request, req.id)


def signed_in(app: Flask, user: User) -> FlaskClient:
    """A browser of its own, signed in as `user`."""
    browser = app.test_client()
    assert post_form(browser, "/login", {"email": user.email, "password": "correct-horse-9"}).status_code == 302
    return browser


def status_changes(req: Request) -> list[tuple[str, str]]:
    return [(e.actor, e.detail) for e in db.session.scalars(
        sa.select(AuditEvent).where(AuditEvent.request_id == req.id, AuditEvent.action == "status_change")
        .order_by(AuditEvent.id))]


# --- 13.5: the Delivered notice, once sent, completes the request ----------------------------


def test_the_sent_delivered_notice_completes_the_request_and_nothing_else_is_sent(
    app, client, requester, analyst, smtp, maintenance
):
    smtp.start()
    req = submit(client, valid_import())
    move(req, *IMPORT_TO_DELIVERED, actor_id=analyst.id)
    assert reload(req).status == S.DELIVERED  # queued is not sent

    run_jobs(maintenance)

    assert reload(req).status == S.COMPLETED
    [msg] = smtp.inbox.messages  # the Delivered notice is the requester's notification: no second mail
    assert msg["Subject"] == f"{req.call_ref}: images delivered"
    assert status_changes(req)[-1] == (audit.SYSTEM_MAIL, f"{req.call_ref} Delivered -> Completed")
    # The requester sees it on their page, in the thread too.
    page = client.get(f"/requests/{req.call_ref}").get_data(as_text=True)
    assert "Completed" in page and "The requester was e-mailed that the images are delivered." in page
    assert mail.flush_outbox() == 0 and len(smtp.inbox.envelopes) == 1


@pytest.mark.slow
def test_through_the_worker_pool_the_delivered_mail_completes_the_request(
    app, client, requester, analyst, smtp, maintenance, database_url, redis_url
):
    smtp.start()
    req = submit(client, valid_import())
    move(req, *IMPORT_TO_DELIVERED, actor_id=analyst.id)  # the commit queues mail-1
    pool = start_pool(app, database_url, redis_url, "maintenance=1", SMTP_HOST="127.0.0.1",
                      SMTP_PORT=str(smtp.port), SMTP_FROM="iep-desk@uhl-tr.nhs.uk", SMTP_STARTTLS="0")
    try:
        wait_for(lambda: reload(req).status == S.COMPLETED, 60, "the pool to send the mail and complete the request")
    finally:
        kill_pool(pool, signal.SIGTERM)
    assert [e.rcpt_tos for e in smtp.inbox.envelopes] == [[REQUESTER_MAIL]]
    [row] = outbox()
    assert row.status == OutboxStatus.SENT.value and row.event == "Delivered"
    assert status_changes(req)[-1] == (audit.SYSTEM_MAIL, f"{req.call_ref} Delivered -> Completed")


def test_while_the_mail_server_is_down_the_request_stays_delivered_until_the_mail_goes(
    client, requester, analyst, smtp, maintenance
):
    req = submit(client, valid_import())
    with freeze(T0):
        move(req, *IMPORT_TO_DELIVERED, actor_id=analyst.id)
        run_jobs(maintenance)  # nothing listens yet: the mail waits, and so does the request
    assert reload(req).status == S.DELIVERED
    smtp.start()
    with freeze(T0 + timedelta(minutes=2)):
        assert mail.flush_outbox() == 1
        run_jobs(maintenance)
    assert reload(req).status == S.COMPLETED and len(smtp.inbox.envelopes) == 1


def test_a_requester_without_an_address_stays_delivered_and_the_desk_is_told_why(
    app, client, requester, analyst, maintenance
):
    req = submit(client, valid_import())
    req.contact_email = ""
    db.session.get_one(User, requester.id).email = "no-address"
    db.session.commit()
    move(req, *IMPORT_TO_DELIVERED, actor_id=analyst.id)
    run_jobs(maintenance)

    assert outbox() == [] and reload(req).status == S.DELIVERED
    [note] = db.session.scalars(sa.select(Message).where(Message.request_id == req.id,
                                                         Message.kind == MessageKind.INTERNAL.value)).all()
    assert "no valid e-mail address" in note.body and "stays Delivered" in note.body
    desk_view = signed_in(app, analyst).get(f"/requests/{req.call_ref}/live").get_data(as_text=True)
    assert "stays Delivered" in desk_view and "Internal note" in desk_view


def test_an_export_is_completed_by_the_requesters_notice_not_the_receiving_sites(
    client, requester, analyst, smtp, maintenance
):
    smtp.start()
    req = submit(client, valid_export(), "/requests/new/export")
    move(req, S.ACCEPTED, S.UPLOADING, S.ON_IEP, actor_id=analyst.id)
    run_jobs(maintenance)  # "images sent" to the site and to the requester
    assert reload(req).status == S.ON_IEP
    move(reload(req), S.DELIVERED, actor_id=analyst.id)
    run_jobs(maintenance)
    assert reload(req).status == S.COMPLETED
    assert sorted((r.event or "", r.to_addr) for r in outbox()) == [
        ("Delivered", REQUESTER_MAIL), ("export-sent", "jane.rowe@kgh.nhs.uk"), ("export-sent", REQUESTER_MAIL)]


def test_sending_an_old_delivered_notice_again_changes_nothing(client, requester, analyst, smtp, maintenance):
    smtp.start()
    req = submit(client, valid_import())
    move(req, *IMPORT_TO_DELIVERED, actor_id=analyst.id)
    run_jobs(maintenance)
    [row] = outbox()
    assert notices.on_sent(row) is False  # already Completed: on_sent is idempotent
    assert reload(req).status == S.COMPLETED and len(status_changes(req)) == len(IMPORT_TO_DELIVERED) + 1


def test_the_gateway_purge_leaves_a_completed_request_completed(app, client, requester, analyst, smtp, maintenance):
    smtp.start()
    req = submit(client, valid_import())
    move(req, *IMPORT_TO_DELIVERED, actor_id=analyst.id)
    run_jobs(maintenance)
    folder = app.config["IEP_SETTINGS"].instance_path / "gateway-copy"
    folder.mkdir()
    long_ago = utcnow() - timedelta(days=16)
    db.session.add(InboundStudy(study_uid="1.2.3.13", request_id=req.id, folder=str(folder), received_at=long_ago,
                                delivered_at=long_ago))
    db.session.commit()
    assert transfer_jobs.purge_gateway() == 1
    assert not folder.exists() and reload(req).status == S.COMPLETED


# --- 13.6: a desk message is e-mailed, and the box is emptied -----------------------------


def _say(browser: FlaskClient, call_ref: str, body: str, kind: str = "message"):  # noqa: ANN202
    token = csrf_token(browser, f"/requests/{call_ref}")
    return browser.post(f"/requests/{call_ref}/messages", data={"csrf_token": token, "body": body, "kind": kind},
                        headers={"HX-Request": "true"})


def test_a_desk_message_is_emailed_to_the_requester_with_the_call_reference(
    app, client, requester, analyst, smtp, maintenance
):
    smtp.start()
    req = submit(client, valid_import())
    desk = signed_in(app, analyst)
    answer = _say(desk, req.call_ref, "Derby will send the CT today; the MRI is not there.")
    assert answer.status_code == 200
    html = answer.get_data(as_text=True)
    assert "Derby will send the CT today" in html  # the thread, with the new message
    # The box comes back empty, out of band, and the line under it says where the message went.
    assert re.search(r'<textarea id="body"[^>]*hx-swap-oob="true"[^>]*></textarea>', html)
    assert f"Sent. An e-mail to {REQUESTER_MAIL} is queued; Mail not delivered lists it if it cannot be sent." in html

    run_jobs(maintenance)
    [envelope] = smtp.inbox.envelopes
    assert envelope.rcpt_tos == [REQUESTER_MAIL]
    [msg] = smtp.inbox.messages
    assert msg["Subject"] == f"{req.call_ref}: a message from the Image Exchange Desk"
    body = msg.get_content()
    assert "Derby will send the CT today; the MRI is not there." in body
    assert f"http://localhost/requests/{req.call_ref}#messages" in body and req.call_ref in body
    [row] = outbox()
    assert row.event == notices.DESK_MESSAGE and row.status == OutboxStatus.SENT.value
    trail = db.session.scalars(sa.select(AuditEvent.detail).where(AuditEvent.action == "message")).all()
    assert trail == [f"{req.call_ref} message e-mailed to the requester"]


def test_two_desk_messages_make_two_mails(app, client, requester, analyst):
    req = submit(client, valid_import())
    desk = signed_in(app, analyst)
    _say(desk, req.call_ref, "First.")
    _say(desk, req.call_ref, "Second.")
    assert [("First." in r.body, "Second." in r.body) for r in outbox()] == [(True, False), (False, True)]


def test_notes_and_the_requesters_own_messages_are_not_emailed(app, client, requester, analyst):
    req = submit(client, valid_import())
    desk = signed_in(app, analyst)
    internal = _say(desk, req.call_ref, "Phoned Derby.", kind="internal")
    assert internal.status_code == 200 and "Saved on the request." in internal.get_data(as_text=True)
    assert _say(desk, req.call_ref, "Derby says: tomorrow.", kind="institution").status_code == 200
    own = _say(client, req.call_ref, "Any news?")
    assert own.status_code == 200 and "Sent to the service desk." in own.get_data(as_text=True)
    assert outbox() == []


def test_a_refused_message_leaves_the_box_alone(app, client, requester, analyst):
    req = submit(client, valid_import())
    answer = _say(signed_in(app, analyst), req.call_ref, "   ")
    assert answer.status_code == 422
    html = answer.get_data(as_text=True)
    assert "Write a message before sending it." in html and "hx-swap-oob" not in html  # what was typed stays
    assert outbox() == []


def test_without_an_address_the_desk_is_told_the_message_was_not_emailed(app, client, requester, analyst):
    req = submit(client, valid_import())
    req.contact_email = ""
    db.session.get_one(User, requester.id).email = "no-address"
    db.session.commit()
    html = _say(signed_in(app, analyst), req.call_ref, "Please call us.").get_data(as_text=True)
    assert "Not e-mailed: the request has no valid e-mail address" in html and outbox() == []


# --- 13.7: Awaiting Details needs the note ------------------------------------------------


def _edit(browser: FlaskClient, req: Request, **values: str):  # noqa: ANN202
    fresh = reload(req)
    token = csrf_token(browser, f"/desk/requests/{req.call_ref}/edit")
    data = {"csrf_token": token, "version": str(fresh.version), "status": fresh.status.value, "decline_reason": "",
            "note": "", "assigned_to": "", "mbp_call_ref": "", "imaging_uploaded_by": "", "images_fixed_up_by": "",
            "date_imaging_sent": "", **values}
    return browser.post(f"/desk/requests/{req.call_ref}/edit", data=data, headers={"HX-Request": "true"})


@pytest.mark.parametrize("note", ["", "   \n "], ids=["empty", "blank"])
def test_awaiting_details_without_a_note_is_refused_in_the_editor_and_what_was_typed_is_kept(
    app, client, requester, analyst, note
):
    req = submit(client, valid_import())
    desk = signed_in(app, analyst)
    refused = _edit(desk, req, status="Awaiting Details", note=note, mbp_call_ref="NTT-4711")
    assert refused.status_code == 422
    html = refused.get_data(as_text=True)
    assert 'id="note-error"' in html and "Say in the note what is missing or wrong" in html
    assert 'value="NTT-4711"' in html and '<option selected value="Awaiting Details">' in html
    assert reload(req).status == S.NEW and reload(req).mbp_call_ref == "" and outbox() == []

    saved = _edit(desk, req, status="Awaiting Details", note=NOTE)
    assert saved.status_code == 200 and reload(req).status == S.AWAITING_DETAILS
    [row] = outbox()
    assert NOTE in row.body and "contact the service desk" not in row.body


def test_the_machine_and_the_cli_refuse_awaiting_details_without_a_note(client, requester, runner):
    req = submit(client, valid_import())
    with pytest.raises(TransitionRefused) as refused:
        transition(req, S.AWAITING_DETAILS, actor_id=None, actor="test", note=" ")
    assert refused.value.field == "note"
    db.session.rollback()
    result = runner.invoke(args=["requests", "set-status", req.call_ref, "Awaiting Details"])
    assert result.exit_code != 0 and "Say in the note what is missing" in result.output
    assert reload(req).status == S.NEW


# --- 13.7: the requester corrects their request -------------------------------------------


def _awaiting(req: Request, analyst: User, *before: Status) -> Request:
    move(req, *before, S.AWAITING_DETAILS, actor_id=analyst.id, note=NOTE)
    return reload(req)


def test_the_requester_corrects_the_request_each_change_is_audited_and_shown_to_the_desk(
    app, client, requester, analyst
):
    req = _awaiting(submit(client, valid_import()), analyst)
    page = client.get(f"/requests/{req.call_ref}").get_data(as_text=True)
    assert f'href="/requests/{req.call_ref}/correct"' in page and "Correct the request" in page

    form = client.get(f"/requests/{req.call_ref}/correct")
    html = form.get_data(as_text=True)
    assert form.status_code == 200 and NOTE in html  # what the desk asked for, above the form
    assert 'value="Nottingham University Hospitals NHS Trust"' in html and 'value="CCAPC"' in html  # prefilled

    corrected = {**valid_import(), "institution_name": "Royal Derby Hospital", "exams-0-exam_code": "CHEST1",
                 "consultant": "Dr Okafor"}
    done = post_form(client, f"/requests/{req.call_ref}/correct", corrected)
    assert done.status_code == 302 and done.headers["Location"] == f"/requests/{req.call_ref}"

    req = reload(req)
    assert req.status == S.NEW  # back with the desk
    assert (req.institution_name, req.consultant, req.exams[0].exam_code) == ("Royal Derby Hospital", "Dr Okafor",
                                                                              "CHEST1")
    edits = db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action == "edit").order_by(AuditEvent.id)).all()
    assert [(e.user_id, e.detail) for e in edits] == [
        (requester.id, f'{req.call_ref} corrected by the requester: institution_name '
                       '"Nottingham University Hospitals NHS Trust" -> "Royal Derby Hospital"'),
        (requester.id, f'{req.call_ref} corrected by the requester: consultant "Dr Ahmed" -> "Dr Okafor"'),
        (requester.id, f"{req.call_ref} corrected by the requester: exams "
                       f'"{req.exams[0].exam_date:%d/%m/%Y} CT chest abdomen pelvis (CCAPC)" -> '
                       f'"{req.exams[0].exam_date:%d/%m/%Y} CT chest abdomen pelvis (CHEST1)"'),
    ]
    assert status_changes(req)[-1] == (requester.email, f"{req.call_ref} Awaiting Details -> New")
    desk_view = signed_in(app, analyst).get(f"/requests/{req.call_ref}/live").get_data(as_text=True)
    assert "Corrected the request" in desk_view
    assert "Sending hospital or trust: Nottingham University Hospitals NHS Trust → Royal Derby Hospital" in desk_view
    assert "Consultant: Dr Ahmed → Dr Okafor" in desk_view
    # Back at New, there is nothing more to correct.
    assert client.get(f"/requests/{req.call_ref}/correct").status_code == 409


@pytest.mark.parametrize("step", [S.AWAITING_DROP_OFF, S.COLLECTED], ids=lambda s: s.value)
def test_a_corrected_cd_request_goes_back_to_its_step_of_the_cd_round(client, requester, analyst, step):
    req = submit(client, valid_cd(), "/requests/new/cd")
    req = _awaiting(req, analyst, *([step] if step != S.AWAITING_DROP_OFF else []))
    done = post_form(client, f"/requests/{req.call_ref}/correct", {**valid_cd(), "cd_count": "3"})
    assert done.status_code == 302
    req = reload(req)
    assert (req.status, req.cd_count) == (step, 3)


def test_a_correction_that_changes_nothing_is_refused(client, requester, analyst):
    req = _awaiting(submit(client, valid_import()), analyst)
    same = post_form(client, f"/requests/{req.call_ref}/correct", valid_import())
    assert same.status_code == 422 and "Nothing was changed" in same.get_data(as_text=True)
    assert reload(req).status == S.AWAITING_DETAILS


def test_a_wrong_correction_names_the_field_keeps_what_was_typed_and_saves_nothing(client, requester, analyst):
    req = _awaiting(submit(client, valid_import()), analyst)
    bad = post_form(client, f"/requests/{req.call_ref}/correct",
                    {**valid_import(), "s_number": "S9999999", "consultant": "Dr Okafor"})
    html = bad.get_data(as_text=True)
    assert bad.status_code == 422 and 'id="s_number-error"' in html and "No patient with this S number" in html
    assert 'value="S9999999"' in html and 'value="Dr Okafor"' in html
    req = reload(req)
    assert (req.status, req.s_number, req.consultant) == (S.AWAITING_DETAILS, "S1234567", "Dr Ahmed")
    assert db.session.scalar(sa.select(sa.func.count()).where(AuditEvent.action == "edit")) == 0


def test_an_exam_line_can_be_added_while_correcting(client, requester, analyst):
    req = _awaiting(submit(client, valid_import()), analyst)
    added = post_form(client, f"/requests/{req.call_ref}/correct", {**valid_import(), "action": "add_exam"},
                      headers={"HX-Request": "true"})
    assert added.status_code == 200 and 'name="exams-1-exam_date"' in added.get_data(as_text=True)
    day = (utcnow() - timedelta(days=3)).date().isoformat()
    two = {**valid_import(), "exams-1-exam_date": day, "exams-1-description": "MRI head", "exams-1-exam_code": ""}
    assert post_form(client, f"/requests/{req.call_ref}/correct", two).status_code == 302
    assert [e.description for e in reload(req).exams] == ["CT chest abdomen pelvis", "MRI head"]


def test_only_the_requester_corrects_and_only_while_details_are_awaited(app, client, requester, analyst, make_user):
    req = submit(client, valid_import())
    assert client.get(f"/requests/{req.call_ref}/correct").status_code == 409
    token = csrf_token(client, f"/requests/{req.call_ref}")
    conflict = client.post(f"/requests/{req.call_ref}/correct", data={**valid_import(), "csrf_token": token})
    assert conflict.status_code == 409
    assert "can be corrected only while the service desk is waiting for details" in conflict.get_data(as_text=True)
    req = _awaiting(req, analyst)
    other = signed_in(app, make_user("requester"))
    assert other.get(f"/requests/{req.call_ref}/correct").status_code == 403
    assert signed_in(app, analyst).get(f"/requests/{req.call_ref}/correct").status_code == 403
    assert "Correct the request" not in signed_in(app, analyst).get(f"/requests/{req.call_ref}").get_data(as_text=True)
    assert reload(req).status == S.AWAITING_DETAILS


# --- 13.7: the requester cancels their request ---------------------------------------------


def test_the_requester_cancels_after_a_confirmation(client, requester, analyst):
    req = submit(client, valid_import())
    page = client.get(f"/requests/{req.call_ref}").get_data(as_text=True)
    assert f'href="/requests/{req.call_ref}/cancel"' in page
    confirm = client.get(f"/requests/{req.call_ref}/cancel")
    assert confirm.status_code == 200 and f"Yes, cancel {req.call_ref}" in confirm.get_data(as_text=True)
    assert reload(req).status == S.NEW  # asking is not doing

    done = post_form(client, f"/requests/{req.call_ref}/cancel", {})
    assert done.status_code == 302 and reload(req).status == S.CANCELLED
    assert status_changes(req)[-1] == (requester.email, f"{req.call_ref} New -> Cancelled")
    [row] = outbox()
    assert row.subject == f"{req.call_ref}: your image request was cancelled"
    assert "Cancelled by the requester." in row.body
    assert "Cancel the request" not in client.get(f"/requests/{req.call_ref}").get_data(as_text=True)


@pytest.mark.parametrize("kind", ["awaiting_details", "awaiting_drop_off"])
def test_cancel_is_allowed_before_acceptance(client, requester, analyst, kind):
    if kind == "awaiting_details":
        req = _awaiting(submit(client, valid_import()), analyst)
    else:
        req = submit(client, valid_cd(), "/requests/new/cd")
        assert req.status == S.AWAITING_DROP_OFF
    assert post_form(client, f"/requests/{req.call_ref}/cancel", {}).status_code == 302
    assert reload(req).status == S.CANCELLED


@pytest.mark.parametrize("status", [S.ACCEPTED, S.CANCELLED], ids=lambda s: s.value)
def test_cancel_after_acceptance_is_refused_with_409(client, requester, analyst, status):
    req = submit(client, valid_import())
    move(req, status, actor_id=analyst.id, note="Duplicate." if status == S.CANCELLED else "")
    token = csrf_token(client, f"/requests/{req.call_ref}")
    assert client.get(f"/requests/{req.call_ref}/cancel").status_code == 409
    refused = client.post(f"/requests/{req.call_ref}/cancel", data={"csrf_token": token})
    text = refused.get_data(as_text=True)
    assert refused.status_code == 409
    assert ("already cancelled" if status == S.CANCELLED else "can be cancelled here only before the service "
            "desk accepts it") in text
    assert reload(req).status == status
    assert "Cancel the request" not in client.get(f"/requests/{req.call_ref}").get_data(as_text=True)


def test_another_users_request_cannot_be_cancelled(app, client, requester, analyst, make_user):
    req = submit(client, valid_import())
    other = signed_in(app, make_user("requester"))
    token = csrf_token(other, "/requests")
    assert other.get(f"/requests/{req.call_ref}/cancel").status_code == 403
    assert other.post(f"/requests/{req.call_ref}/cancel", data={"csrf_token": token}).status_code == 403
    desk = signed_in(app, analyst)
    assert desk.post(f"/requests/{req.call_ref}/cancel", data={"csrf_token": csrf_token(desk, "/requests")}
                     ).status_code == 403
    assert client.post(f"/requests/{req.call_ref}/cancel").status_code == 400  # no CSRF token
    assert reload(req).status == S.NEW
    denied = db.session.scalars(sa.select(AuditEvent.detail).where(AuditEvent.action == "access_denied")).all()
    assert f"POST /requests/{req.call_ref}/cancel" in denied


# --- migration 0013_life: a Delivered notice waiting in the outbox still completes ----------


@pytest.mark.own_database
def test_0013_gives_the_pending_notices_their_event_from_the_dedup_key(tmp_path, redis_url):
    from flask_migrate import downgrade, upgrade

    from tests.test_migrations import desk_on, empty_database

    with empty_database(tmp_path) as url, desk_on(url, redis_url, tmp_path):
        upgrade(revision="0012")
        rows = [("IEP-2026-000001:Delivered:20260504T090000.000000:0123456789abcdef", "pending"),
                ("IEP-2026-000001:Delivered:20260503T090000.000000:fedcba9876543210", "sent"),
                (None, "pending")]
        with db.engine.begin() as conn:
            for number, (key, status) in enumerate(rows):
                conn.execute(sa.text("INSERT INTO outbox_emails (dedup_key, to_addr, subject, body, status, attempts, "
                                     "last_error, next_attempt_at, created_at) VALUES (:key, 'a@b.nhs.uk', :s, 'b', "
                                     ":status, 0, '', :now, :now)"),
                             {"key": key, "s": f"mail {number}", "status": status, "now": utcnow()})
        upgrade()
        with db.engine.connect() as conn:
            events = conn.execute(sa.text("SELECT subject, event FROM outbox_emails ORDER BY id")).all()
        assert [tuple(row) for row in events] == [("mail 0", "Delivered"), ("mail 1", None), ("mail 2", None)]
        downgrade(revision="0012")
        upgrade()
