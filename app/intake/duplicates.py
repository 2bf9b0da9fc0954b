"""Has this patient's examination already been asked for?

Issue text: "when a request names a patient and exam (date and description or accession)
that is already requested, already imported (a RIS entry exists) or already in transfer,
the requester is warned on the form and the analyst sees the link to the earlier
request in the row".

Two examinations are the same when they are on the same date and either their exam codes
match (both given; case ignored) or their descriptions match (case and runs of
whitespace ignored). A blank code or description never matches another blank one.

No Flask request here: `find_duplicate` is called by the form page and can be called by
anything else that makes requests.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import sqlalchemy as sa

from app.extensions import db
from app.requests.models import ExamLine, Request
from app.requests.statuses import Kind, Status

# (exam_date, description, exam_code), the order of an exam line's columns. The date is
# None on a line the form left undated: such a line matches nothing (`same_exam`).
ExamKey = tuple[date | None, str, str]

# A cancelled request asked for nothing: asking again is not a duplicate of it.
NOT_COUNTED = frozenset({Status.CANCELLED})


def _description(text: str | None) -> str:
    return " ".join((text or "").split()).casefold()


def _code(text: str | None) -> str:
    return (text or "").strip().casefold()


def same_exam(a: ExamKey, b: ExamKey) -> bool:
    """Same date, and the same exam code or the same description."""
    date_a, description_a, code_a = a
    date_b, description_b, code_b = b
    if date_a is None or date_a != date_b:
        return False
    if _code(code_a) and _code(code_a) == _code(code_b):
        return True
    return bool(_description(description_a)) and _description(description_a) == _description(description_b)


def find_duplicate(s_number: str, exams: Iterable[ExamKey], kind: Kind | str) -> Request | None:
    """The latest earlier request of the same kind for this patient (S number) that asks
    for one of `exams` and is not cancelled; None if there is none.

    Same kind only: an import and an export of the same examination move images in
    opposite directions and are not duplicates of each other.

    An examination already imported (a RIS entry exists, from an IEP import or a CD)
    counts too, for imports and CDs. One already in transfer belongs to a request of the
    same kind, which the first look-up finds.
    """
    wanted = [exam for exam in exams if exam[0] is not None]
    if not s_number or not wanted:
        return None
    rows = db.session.execute(
        sa.select(Request, ExamLine.exam_date, ExamLine.description, ExamLine.exam_code)
        .join(ExamLine, ExamLine.request_id == Request.id)
        .where(
            Request.s_number == s_number.strip().upper(),
            Request.kind == Kind(kind),
            Request.status.not_in(NOT_COUNTED),
            ExamLine.exam_date.in_({exam[0] for exam in wanted}),
        )
        .order_by(Request.created_at.desc(), Request.id.desc(), ExamLine.position)
    ).all()
    for earlier, exam_date, description, exam_code in rows:
        if any(same_exam((exam_date, description, exam_code), exam) for exam in wanted):
            return earlier
    if Kind(kind) in (Kind.IMPORT, Kind.CD):
        return _already_imported(s_number, wanted)
    return None


def _already_imported(s_number: str, wanted: list[ExamKey]) -> Request | None:
    """An examination already on RIS for this patient (guideline 2.3 f), whichever route
    (IEP or CD) brought it: same acquisition date and exam code."""
    from app.transfers.models import RisEntry

    entries = db.session.execute(
        sa.select(RisEntry.request_id, RisEntry.event_date, RisEntry.exam_code).where(
            RisEntry.s_number == s_number.strip().upper(),
            RisEntry.event_date.in_({exam[0] for exam in wanted}),
        )
    ).all()
    for request_id, event_date, exam_code in entries:
        if any(same_exam((event_date, "", exam_code), exam) for exam in wanted):
            return db.session.get(Request, request_id)
    return None
