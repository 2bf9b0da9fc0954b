"""The desk always keeps an active administrator: without one, nobody could manage its users.

Both ways of changing a user refuse a change that would leave none: the admin pages
(app.admin.users) and `flask users` (app.auth.cli).
"""

from __future__ import annotations

import sqlalchemy as sa

from app.auth.models import Role, User
from app.extensions import db

LAST_ADMIN = ("This is the last active administrator account. Make another user an administrator first: "
              "without one, nobody could manage the desk's users.")


def leaves_no_admin(user: User, *, role: Role | None = None, active: bool | None = None) -> bool:
    """True when making this change to `user` would leave no active administrator."""
    stays_admin = (role or user.role) == Role.ADMIN and (user.active if active is None else active)
    if user.role != Role.ADMIN or not user.active or stays_admin:
        return False
    # Locked: two administrators demoting each other at once must not both succeed (PostgreSQL;
    # SQLite writes one transaction at a time).
    others = db.session.scalars(
        sa.select(User.id).where(User.role == Role.ADMIN, User.active, User.id != user.id).with_for_update()
    ).all()
    return not others
