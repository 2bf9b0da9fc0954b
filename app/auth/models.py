"""Users and roles."""

from __future__ import annotations

import enum
import secrets
from datetime import datetime

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask_login import UserMixin
from werkzeug.security import check_password_hash, generate_password_hash

from app.extensions import Model
from app.timeutil import utcnow


class Role(enum.StrEnum):
    REQUESTER = "requester"
    ANALYST = "analyst"
    AM_RADIOLOGY = "am_radiology"
    RADIOLOGIST = "radiologist"
    ADMIN = "admin"

    @property
    def label(self) -> str:
        return {
            "requester": "Requester",
            "analyst": "Service desk analyst",
            "am_radiology": "AM radiology",
            "radiologist": "Radiologist (on call)",
            "admin": "Administrator",
        }[self.value]


# Roles that work the queue and may see every request (DESIGN "Who uses it").
DESK_ROLES = frozenset({Role.ANALYST, Role.AM_RADIOLOGY, Role.ADMIN})


# Werkzeug's default (scrypt). The test suite lowers it: hashing is not what it tests.
PASSWORD_METHOD = "scrypt"  # noqa: S105 - the name of a hashing method, not a password


# The hash checked when no such account exists, so an unknown e-mail address costs what a
# known one does (no enumeration by timing, issue 11.3). Made on first use, per method
# (the test suite lowers the method).
_DUMMY_HASHES: dict[str, str] = {}


def verify_password(user: User | None, password: str) -> bool:
    """Check `password` against `user`, at the same cost when there is no user (then False)."""
    if user is None:
        dummy = _DUMMY_HASHES.get(PASSWORD_METHOD)
        if dummy is None:
            dummy = generate_password_hash(secrets.token_urlsafe(16), method=PASSWORD_METHOD)
            _DUMMY_HASHES[PASSWORD_METHOD] = dummy
        check_password_hash(dummy, password)
        return False
    return user.check_password(password)


def _new_session_token() -> str:
    return secrets.token_urlsafe(24)


class User(UserMixin, Model):
    __tablename__ = "users"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    email: so.Mapped[str] = so.mapped_column(sa.String(254), unique=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(120))
    role: so.Mapped[Role] = so.mapped_column(
        sa.Enum(Role, native_enum=False, length=20, create_constraint=True,
                values_callable=lambda roles: [r.value for r in roles], name="role")
    )
    password_hash: so.Mapped[str] = so.mapped_column(sa.String(256))
    phone: so.Mapped[str] = so.mapped_column(sa.String(40), default="")
    department: so.Mapped[str] = so.mapped_column(sa.String(120), default="")
    active: so.Mapped[bool] = so.mapped_column(default=True)
    # Part of every session's identity: rotating it signs the user out everywhere
    # (sign-out, role change, deactivation). Flask's cookie sessions are otherwise
    # valid until they expire and cannot be revoked (PITFALLS "Web").
    session_token: so.Mapped[str] = so.mapped_column(
        sa.String(64), default=_new_session_token
    )
    created_at: so.Mapped[datetime] = so.mapped_column(
        sa.DateTime(timezone=True), default=utcnow
    )
    # Set by an administrator (issue 14.1): the guard sends this user to choose a new
    # password before anything else; choosing one clears it.
    must_change_password: so.Mapped[bool] = so.mapped_column(default=False)

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password, method=PASSWORD_METHOD)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    def revoke_sessions(self) -> None:
        self.session_token = _new_session_token()

    def get_id(self) -> str:
        return f"{self.id}:{self.session_token}"

    @property
    def is_active(self) -> bool:  # Flask-Login refuses inactive users
        return self.active

    @property
    def is_desk(self) -> bool:
        return self.role in DESK_ROLES

    def has_role(self, *roles: Role) -> bool:
        return self.role in roles

    def __repr__(self) -> str:
        return f"<User {self.id} {self.role}>"
