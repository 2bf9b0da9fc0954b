"""Which e-mails a status change sends (guideline 2.3 g, 2.6 b, 2.4 d, 2.5).

Filled in by the outbox work; until then a transition sends nothing.
"""

from __future__ import annotations

from app.intake.models import Request
from app.workflow.statuses import Status


def on_transition(req: Request, old: Status, new: Status) -> None:
    """Queue the e-mails that a change from `old` to `new` calls for."""
