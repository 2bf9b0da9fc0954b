"""Messages on a request, and the live status panel of the request page."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, flash, redirect, render_template, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import RadioField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Length

from app import audit, htmx
from app.extensions import db
from app.requests.access import visible_request
from app.requests.models import Request
from app.workflow import notices
from app.workflow.models import Message, MessageKind

bp = Blueprint("workflow", __name__)


class MessageForm(FlaskForm):
    body = TextAreaField("Message", validators=[Length(max=4000)])
    kind = RadioField(
        "Who sees it",
        choices=[
            SelectChoice(MessageKind.MESSAGE.value, "Message to the requester (shown and e-mailed to them)"),
            SelectChoice(MessageKind.INTERNAL.value, "Internal note (desk only)"),
            SelectChoice(MessageKind.INSTITUTION.value, "What the other institution said"),
        ],
        default=MessageKind.MESSAGE.value,
    )


def thread_for(req: Request) -> list[Message]:
    """The request's messages that the signed-in user may read, oldest first."""
    stmt = sa.select(Message).where(Message.request_id == req.id).order_by(Message.created_at, Message.id)
    if not current_user.is_desk:
        stmt = stmt.where(Message.kind != MessageKind.INTERNAL.value)
    return list(db.session.scalars(stmt.options(sa.orm.joinedload(Message.author))))


def _panel(req: Request, form: MessageForm, status: int = 200):  # noqa: ANN202
    return render_template("workflow/_live.html", req=req, messages=thread_for(req), form=form), status


@bp.route("/requests/<call_ref>/live", methods=["GET"])
def live(call_ref: str):
    """Status and messages of one request, for the page's poll."""
    req = visible_request(call_ref)
    return _panel(req, MessageForm())


@bp.route("/requests/<call_ref>/messages", methods=["POST"])
def post_message(call_ref: str):
    """Add a message (requester or desk) or a desk-only note."""
    req = visible_request(call_ref)
    form = MessageForm()
    if not current_user.is_desk:
        form.kind.data = MessageKind.MESSAGE.value  # a requester cannot write desk notes
    body = (form.body.data or "").strip()
    if not form.validate() or not body:
        if not body:
            form.body.errors = [*form.body.errors, "Write a message before sending it."]
        if htmx.is_htmx():
            return _panel(req, form, 422)
        flash(" ".join(form.body.errors + form.kind.errors) or "The message could not be sent.", "error")
        return redirect(url_for("intake.show", call_ref=req.call_ref))
    message = Message(request_id=req.id, author_id=current_user.id, kind=form.kind.data, body=body)
    db.session.add(message)
    db.session.flush()
    detail = f"{req.call_ref} {form.kind.data}"
    sent_note = "Sent to the service desk." if not current_user.is_desk else "Saved on the request."
    if current_user.is_desk and form.kind.data == MessageKind.MESSAGE.value:
        # Issue 13.6: the requester is e-mailed what the desk writes to them.
        link = url_for("intake.show", call_ref=req.call_ref, _external=True) + "#messages"
        to = notices.on_desk_message(req, message, link)
        detail += " e-mailed to the requester" if to else " not e-mailed (no valid address)"
        sent_note = (f"Sent. An e-mail to {to} is queued; Mail not delivered lists it if it cannot be sent." if to else
                     "Sent. Not e-mailed: the request has no valid e-mail address; the requester sees it here.")
    audit.record(audit.Action.MESSAGE, request_id=req.id, detail=detail)
    db.session.commit()
    if htmx.is_htmx():
        # The panel with the new message; the box emptied, out of band (_sent.html).
        return render_template("workflow/_sent.html", req=req, messages=thread_for(req), form=MessageForm(),
                               sent_note=sent_note)
    flash(sent_note, "success")
    return redirect(url_for("intake.show", call_ref=req.call_ref) + "#messages")
