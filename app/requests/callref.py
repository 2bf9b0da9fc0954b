"""Call references: `IEP-<year>-<6 digits>`, issued in order, never twice."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from app.extensions import db
from app.requests.models import CallRefCounter


def next_call_ref(year: int) -> str:
    """Take the next number for `year` inside the caller's transaction.

    The UPDATE locks the year's counter row until the caller commits, so two submissions
    at once get different numbers (PostgreSQL row lock; SQLite's single writer).
    """
    for _ in range(3):
        number = db.session.execute(
            sa.update(CallRefCounter)
            .where(CallRefCounter.year == year)
            .values(last=CallRefCounter.last + 1)
            .returning(CallRefCounter.last)
        ).scalar()
        if number is not None:
            return f"IEP-{year}-{number:06d}"
        try:
            with db.session.begin_nested():
                db.session.add(CallRefCounter(year=year, last=0))
        except IntegrityError:
            continue  # another submission created the year's row first: take a number
    raise RuntimeError("could not issue a call reference")
