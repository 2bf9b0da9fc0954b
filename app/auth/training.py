"""The training register (guideline section 3: staff involved in the IEP process are trained
by the MBP Applications team or by cascade from a senior member of staff; "records will be
held locally"), and the rule that may tie the desk roles to it (issue 14.7).

The rule lives with the users, not with the admin pages, because both the admin's user form
and the CLI (`users create`, `users set-role`) apply it. Flask only; no views here.
"""

from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask import current_app

from app.auth.models import Role, User
from app.extensions import Model, db
from app.timeutil import utcnow

# The roles that work the IEP process at the desk; an admin is not one of them here (the
# guideline's training is on operating the IEP, which an admin may never do).
TRAINED_ROLES = frozenset({Role.ANALYST, Role.AM_RADIOLOGY})


class TrainingRecord(Model):
    """One training session a person had: who, by whom, when and on what."""

    __tablename__ = "training_records"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    user_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("users.id"), index=True)
    # Who trained them: always a name (as typed, or the desk user's name at the time), and
    # the desk user when the trainer is one.
    trainer_name: so.Mapped[str] = so.mapped_column(sa.String(120))
    trainer_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"))
    trained_on: so.Mapped[date] = so.mapped_column(sa.Date, index=True)
    topic: so.Mapped[str] = so.mapped_column(sa.String(200))
    recorded_by_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"))
    recorded_at: so.Mapped[datetime] = so.mapped_column(sa.DateTime(timezone=True), default=utcnow)

    user: so.Mapped[User] = so.relationship(foreign_keys=[user_id])

    def describe(self) -> str:
        """The record in one line, for the audit (the row itself may be deleted)."""
        return f"{self.topic!r} on {self.trained_on.isoformat()} by {self.trainer_name!r}"


def training_required() -> bool:
    """True when DESK_REQUIRES_TRAINING is on."""
    return bool(current_app.config["IEP_SETTINGS"].desk_requires_training)


def has_training(user_id: int | None) -> bool:
    if user_id is None:
        return False
    return db.session.scalar(sa.select(sa.exists().where(TrainingRecord.user_id == user_id))) or False


def training_refusal(user_id: int | None, role: Role) -> str | None:
    """Why `role` cannot be given to this user (None: a new one), or None when it can: with
    DESK_REQUIRES_TRAINING on, the desk roles need a training record first."""
    if role not in TRAINED_ROLES or not training_required() or has_training(user_id):
        return None
    first = "create the user with another role, record" if user_id is None else "record"
    return (f"{role.label} is a desk role, and desk roles need a training record (DESK_REQUIRES_TRAINING is on): "
            f"{first} their training in the training register, then give them the role.")


def untrained_desk_staff() -> list[User]:
    """Active users with a desk role and no training record, by name."""
    return list(db.session.scalars(
        sa.select(User)
        .where(User.active, User.role.in_(TRAINED_ROLES), ~sa.exists().where(TrainingRecord.user_id == User.id))
        .order_by(sa.func.lower(User.name), User.id)
    ))
