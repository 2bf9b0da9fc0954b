"""A generated history for the compliance report's tests (issue 14.6).

`plan_history` draws requests (kind, priority, submission time, the statuses each goes
through and when) and transfers with a seeded random generator, as plain data. `write`
puts the plan in the database the way the desk does it: the requests as rows, every status
change through `machine.transition` with the clock frozen at its moment (so the audit rows
are the real ones), an analyst's Retry as the audit row `act_on` writes. The tests compute
what the report should say from the plan alone (`tests/test_admin_reports.py`).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from app import audit
from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import Kind, Priority, Status
from app.timeutil import freeze
from app.transfers.models import Direction, Transfer, TransferState
from app.workflow.machine import transition

S = Status
AUTO = "auto-cancel"  # a step's `by`: the 14-day rule's job, not a person
MINUTE = timedelta(minutes=1)


@dataclass
class Step:
    status: Status
    at: datetime
    by: str = "analyst"  # or AUTO
    reason: str = ""  # a decline's reason code


@dataclass
class Planned:
    kind: Kind
    priority: Priority
    created: datetime
    site: str = ""
    cd_count: int | None = None
    steps: list[Step] = field(default_factory=list)
    request_id: int = 0
    call_ref: str = ""

    @property
    def first(self) -> Status:
        return S.AWAITING_DROP_OFF if self.kind == Kind.CD else S.NEW

    @property
    def final(self) -> Status:
        return self.steps[-1].status if self.steps else self.first

    def reached(self, *statuses: Status) -> datetime | None:
        """When it first reached any of `statuses`, or None."""
        return next((s.at for s in self.steps if s.status in statuses), None)

    @property
    def decline_reason(self) -> str:
        reasons = [s.reason for s in self.steps if s.status == S.DECLINED]
        return reasons[-1] if reasons else ""


@dataclass
class PlannedTransfer:
    direction: Direction
    state: TransferState
    created: datetime
    attempts: int
    partial: bool
    bytes_done: int
    last_error: str = ""
    retried_by_hand: bool = False
    request_index: int | None = None  # into the plan's requests
    transfer_id: int = 0


# Paths a request may take (statuses after its first), each allowed by machine.ALLOWED.
IMPORT_PATHS = (
    (S.ACCEPTED, S.DOWNLOAD_REQUEST, S.DOWNLOADING, S.DELIVERED, S.COMPLETED),
    (S.ACCEPTED, S.ON_IEP, S.DELIVERED, S.COMPLETED),
    (S.AWAITING_DETAILS, S.NEW, S.ACCEPTED, S.DOWNLOAD_REQUEST, S.DOWNLOADING, S.DELIVERED),
    (S.AWAITING_DETAILS, S.ACCEPTED, S.AWAITING_DETAILS, S.ACCEPTED, S.ON_IEP, S.DELIVERED, S.COMPLETED),
    (S.AWAITING_DETAILS, AUTO),
    (S.AWAITING_DETAILS, S.CANCELLED),  # cancelled by a person: not the 14-day rule
    (S.AWAITING_DETAILS,),  # still waiting
    (S.DECLINED, S.ACCEPTED, S.DOWNLOAD_REQUEST, S.DOWNLOADING, S.DELIVERED, S.COMPLETED),  # re-processed
    (S.DECLINED,),
    (S.DECLINED, S.CANCELLED),
    (S.CANCELLED,),
    (S.ACCEPTED, S.DOWNLOAD_REQUEST, S.FAILED),
    (),
)
EXPORT_PATHS = (
    (S.ACCEPTED, S.UPLOADING, S.DELIVERED, S.COMPLETED),
    (S.ACCEPTED, S.UPLOADING, S.ON_IEP, S.DELIVERED, S.COMPLETED),
    (S.ACCEPTED, S.UPLOADING, S.DELIVERED),
    (S.AWAITING_DETAILS, S.ACCEPTED, S.UPLOADING, S.DELIVERED, S.COMPLETED),
    (S.CANCELLED,),
    (S.ACCEPTED, S.FAILED),
    (),
)
CD_PATHS = (
    (S.COLLECTED, S.UPLOADED, S.DOWNLOADING, S.DELIVERED, S.COMPLETED),
    (S.UPLOADED, S.DOWNLOADING, S.DELIVERED, S.COMPLETED),
    (S.AWAITING_DETAILS, S.COLLECTED, S.UPLOADED, S.DELIVERED),
    (S.COLLECTED, S.UPLOADED, S.DELIVERED),
    (S.CANCELLED,),
    (),
)
PATHS = {Kind.IMPORT: IMPORT_PATHS, Kind.EXPORT: EXPORT_PATHS, Kind.CD: CD_PATHS, Kind.TRAUMA: EXPORT_PATHS}
REASONS = ("not_found", "clinically_inappropriate", "other")
SITES = ("LRI", "GH", "LGH")

# Failed transfers' reasons as the engine words them, with the group the report must put
# each in (written here by hand, not taken from the report's own table).
FAILURES = (
    ("connection refused: nothing listens on 10.1.2.3:104 — check the node is running", "Could not connect"),
    ("the node did not answer within 30 seconds — try again later (gave up after 5 attempts)", "No answer in time"),
    ("association rejected: called AE title not recognised — check the node's AE title", "Association rejected"),
    ("3 of 120 instances are not at the destination after sending: ... Retry resends only those.",
     "Instances missing or refused"),
    ("remote out of resources (0xA702): it could not send the instances; try again later", "Refused by the node"),
    ("The desk hit an unexpected error (KeyError); it is logged. Retry, or call IM&T.", "Error in the desk"),
    ("the node aborted the association (reason not specified) — try again later", "Connection dropped"),
    ("something nobody foresaw", "Other"),
)


def _gap(rng: random.Random, priority: Priority, kind: Kind) -> timedelta:
    """Time to the next status: minutes for the urgent, up to days for the rest."""
    if priority == Priority.BLUE_LIGHT or kind == Kind.TRAUMA:
        return timedelta(seconds=rng.randrange(5 * 60, 100 * 60), microseconds=rng.randrange(1_000_000))
    return timedelta(seconds=rng.randrange(20 * 60, 4 * 86_400), microseconds=rng.randrange(1_000_000))


def plan_history(rng: random.Random, start: datetime, end: datetime, count: int,
                 transfers: int = 40) -> tuple[list[Planned], list[PlannedTransfer]]:
    """`count` requests submitted between `start` and `end` (UTC), and `transfers` transfers."""
    span = int((end - start).total_seconds())
    plan: list[Planned] = []
    for _ in range(count):
        kind = rng.choices(list(PATHS), weights=(45, 20, 25, 10))[0]
        if kind == Kind.TRAUMA:
            priority = Priority.BLUE_LIGHT if rng.random() < 0.8 else Priority.STANDARD
        else:
            priority = rng.choices(list(Priority), weights=(20, 65, 15))[0]
        created = start + timedelta(seconds=rng.randrange(span), microseconds=rng.randrange(1_000_000))
        item = Planned(kind, priority, created)
        if kind == Kind.CD:
            item.site, item.cd_count = rng.choice(SITES), rng.randrange(1, 4)
        at = created
        for status in rng.choice(PATHS[kind]):
            if status == AUTO:  # guideline 2.4 d: after 14 days in Awaiting Details
                at += timedelta(days=14, minutes=rng.randrange(1, 30))
                item.steps.append(Step(S.CANCELLED, at, by=AUTO))
                continue
            at += _gap(rng, priority, kind)
            item.steps.append(Step(status, at, reason=rng.choice(REASONS) if status == S.DECLINED else ""))
        plan.append(item)
    moved: list[PlannedTransfer] = []
    for _ in range(transfers):
        # Mostly finished: queued, running, verifying, waiting, delivered, failed, cancelled.
        state = rng.choices(list(TransferState), weights=(1, 1, 1, 1, 6, 3, 1))[0]
        direction = rng.choice(list(Direction))
        moved.append(PlannedTransfer(
            direction=direction, state=state,
            created=start + timedelta(seconds=rng.randrange(span), microseconds=rng.randrange(1_000_000)),
            attempts=rng.choice((0, 1, 1, 1, 2, 3)) if state != TransferState.QUEUED else 0,
            partial=direction == Direction.INBOUND and state == TransferState.DELIVERED and rng.random() < 0.5,
            bytes_done=rng.randrange(0, 3 * 1_048_576 * 100),
            last_error=rng.choice(FAILURES)[0] if state == TransferState.FAILED else "",
            retried_by_hand=rng.random() < 0.25,
            request_index=rng.randrange(count) if count and rng.random() < 0.9 else None,
        ))
    return plan, moved


def write(plan: list[Planned], moved: list[PlannedTransfer], requester_id: int, analyst_id: int,
          patient) -> None:  # noqa: ANN001 - a Patient row
    """Put the plan in the database as the desk would have made it; commits."""
    for number, item in enumerate(plan, start=1):
        req = Request(
            call_ref=f"IEP-{item.created.year}-{900_000 + number:06d}", kind=item.kind, priority=item.priority,
            priority_reason="Theatre" if item.priority == Priority.BLUE_LIGHT else "", status=item.first,
            requester_id=requester_id, created_at=item.created, updated_at=item.created,
            status_changed_at=item.created, patient_id=patient.id, s_number=patient.s_number,
            family_name="Smith", given_name="Margaret", dob=patient.dob, contact_name="Dr Shah",
            drop_off_site=item.site, cd_count=item.cd_count,
        )
        db.session.add(req)
        db.session.flush()
        item.request_id, item.call_ref = req.id, req.call_ref
        for step in item.steps:
            with freeze(step.at):
                if step.by == AUTO:
                    transition(req, step.status, actor_id=None, actor=audit.SYSTEM_AUTO_CANCEL,
                               note="Cancelled automatically after 14 days.")
                else:
                    transition(req, step.status, actor_id=analyst_id,
                               note="Please send the exam dates." if step.status == S.AWAITING_DETAILS else
                               ("Their words." if step.reason == "other" else ""),
                               decline_reason=step.reason)
                db.session.flush()
    for planned in moved:
        req_id = plan[planned.request_index].request_id if planned.request_index is not None else None
        transfer = Transfer(
            request_id=req_id, direction=planned.direction, priority=Priority.STANDARD, state=planned.state,
            attempts=planned.attempts, partial_ok=planned.partial, bytes_done=planned.bytes_done,
            bytes_total=planned.bytes_done, last_error=planned.last_error, created_at=planned.created,
            study_key=uuid.uuid4().hex, finished_at=planned.created + MINUTE,
        )
        db.session.add(transfer)
        db.session.flush()
        planned.transfer_id = transfer.id
        if planned.retried_by_hand and req_id is not None:
            ref = plan[planned.request_index].call_ref  # type: ignore[index]
            with freeze(planned.created + 2 * MINUTE):
                audit.record(audit.Action.TRANSFER, request_id=req_id, user_id=analyst_id,
                             detail=f"{ref} transfer {transfer.id} retry")
                db.session.flush()
    db.session.commit()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)
