"""`flask --app wsgi requests set-status ...`: the same status machine as the pages."""

from __future__ import annotations

import click
import sqlalchemy as sa
from flask.cli import AppGroup

from app import audit
from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import Status
from app.workflow.machine import DECLINE_REASONS, TransitionRefused, transition

requests_cli = AppGroup("requests", help="Work requests from the command line.")


@requests_cli.command("set-status")
@click.argument("call_ref")
@click.argument("status", type=click.Choice([s.value for s in Status]))
@click.option("--note", default="", help="What is missing, or the other institution's words.")
@click.option("--decline-reason", default="", type=click.Choice(["", *DECLINE_REASONS]))
def set_status(call_ref: str, status: str, note: str, decline_reason: str) -> None:
    """Move a request to STATUS if the workflow allows it."""
    req = db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref.upper()))
    if req is None:
        raise click.ClickException(f"no request {call_ref}")
    try:
        transition(req, Status(status), actor_id=None, actor=audit.CLI, note=note, decline_reason=decline_reason)
    except TransitionRefused as refusal:
        db.session.rollback()
        raise click.ClickException(str(refusal)) from refusal
    db.session.commit()
    click.echo(f"{req.call_ref} is now {req.status.value}")
