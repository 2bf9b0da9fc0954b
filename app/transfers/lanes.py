"""Which RQ queue a transfer goes on, and the overnight window for Batch transfers.

Guideline 2.3 d: five outbound lanes, one reserved for Blue Light only, and four inbound
lanes. The queues (named in `app/queues.py`) are those lanes; `worker.py` decides how many
workers listen to which (a dedicated worker on `outbound-bluelight` is what keeps Blue
Light fast).
"""

from __future__ import annotations

from datetime import datetime, time, timedelta

from app.queues import INBOUND, INBOUND_BLUELIGHT, OUTBOUND, OUTBOUND_BATCH, OUTBOUND_BLUELIGHT
from app.requests.statuses import Priority
from app.timeutil import LONDON
from app.transfers.models import Direction


def queue_name(direction: str, priority: str) -> str:
    if direction == Direction.OUTBOUND:
        lanes: dict[str, str] = {  # keyed by the StrEnum, looked up by its plain value alike
            Priority.BLUE_LIGHT: OUTBOUND_BLUELIGHT,
            Priority.BATCH: OUTBOUND_BATCH,
        }
        return lanes.get(priority, OUTBOUND)
    return INBOUND_BLUELIGHT if priority == Priority.BLUE_LIGHT else INBOUND


def parse_window(spec: str) -> tuple[time, time]:
    """"20:00-07:00" -> (20:00, 07:00); raises ValueError when malformed."""
    start, _, end = spec.partition("-")
    return time.fromisoformat(start.strip()), time.fromisoformat(end.strip())


def in_window(moment: datetime, spec: str) -> bool:
    """Is `moment` (any tz) inside the daily window (London time; may cross midnight)?"""
    start, end = parse_window(spec)
    now = moment.astimezone(LONDON).time()
    if start <= end:
        return start <= now < end
    return now >= start or now < end


def next_window_start(moment: datetime, spec: str) -> datetime:
    """The next time the window opens (the moment itself if it is open)."""
    if in_window(moment, spec):
        return moment
    start, _ = parse_window(spec)
    local = moment.astimezone(LONDON)
    candidate = datetime.combine(local.date(), start, tzinfo=LONDON)
    if candidate <= local:
        candidate = datetime.combine(local.date() + timedelta(days=1), start, tzinfo=LONDON)
    return candidate
