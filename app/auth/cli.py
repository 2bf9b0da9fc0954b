"""`flask --app wsgi users ...`"""

from __future__ import annotations

import click
from email_validator import EmailNotValidError, validate_email
from flask.cli import AppGroup

from app import audit
from app.auth.guard import user_by_email
from app.auth.models import Role, User
from app.extensions import db

users_cli = AppGroup("users", help="Manage desk users.")


@users_cli.command("create")
@click.option("--email", required=True)
@click.option("--name", required=True)
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option("--password", required=True)
@click.option("--phone", default="")
@click.option("--department", default="")
def create_user(email: str, name: str, role: str, password: str, phone: str, department: str) -> None:
    """Create a user (or fail clearly if the e-mail address is taken)."""
    try:
        email = validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise click.BadParameter(str(exc), param_hint="--email") from exc
    if len(password) < 10:
        raise click.BadParameter("use at least 10 characters", param_hint="--password")
    if user_by_email(email) is not None:
        raise click.ClickException(f"a user with e-mail {email} already exists")
    user = User(email=email, name=name.strip(), role=Role(role), phone=phone, department=department)
    user.set_password(password)
    db.session.add(user)
    db.session.flush()
    audit.record(audit.Action.USER_CREATED, user_id=None, actor="cli", detail=f"user {user.id} ({role})")
    db.session.commit()
    click.echo(f"Created {role} {email}")


@users_cli.command("list")
def list_users() -> None:
    """List users and their roles."""
    for user in db.session.scalars(db.select(User).order_by(User.email)):
        click.echo(f"{user.email}\t{user.role.value}\t{'active' if user.active else 'inactive'}")


@users_cli.command("set-role")
@click.option("--email", required=True)
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
def set_role(email: str, role: str) -> None:
    """Change a user's role; their open sessions end at once."""
    user = user_by_email(email)
    if user is None:
        raise click.ClickException(f"no user with e-mail {email}")
    user.role = Role(role)
    user.revoke_sessions()
    audit.record(audit.Action.USER_CHANGED, actor="cli", detail=f"user {user.id} role -> {role}")
    db.session.commit()
    click.echo(f"{user.email} is now {role}; their sessions have ended")


@users_cli.command("deactivate")
@click.option("--email", required=True)
def deactivate(email: str) -> None:
    """Stop a user signing in; their open sessions end at once."""
    user = user_by_email(email)
    if user is None:
        raise click.ClickException(f"no user with e-mail {email}")
    user.active = False
    user.revoke_sessions()
    audit.record(audit.Action.USER_CHANGED, actor="cli", detail=f"user {user.id} deactivated")
    db.session.commit()
    click.echo(f"{user.email} can no longer sign in")
