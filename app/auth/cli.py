"""`flask --app wsgi users ...`"""

from __future__ import annotations

import click
from email_validator import EmailNotValidError, validate_email
from flask.cli import AppGroup

from app import audit
from app.auth import throttle
from app.auth.admins import LAST_ADMIN, leaves_no_admin
from app.auth.guard import user_by_email
from app.auth.models import Role, User
from app.auth.passwords import WeakPassword, check_password
from app.auth.training import training_refusal
from app.extensions import db

users_cli = AppGroup("users", help="Manage desk users.")


@users_cli.command("create")
@click.option("--email", required=True)
@click.option("--name", required=True)
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--phone", default="")
@click.option("--department", default="")
def create_user(email: str, name: str, role: str, password: str, phone: str, department: str) -> None:
    """Create a user (or fail clearly if the e-mail address is taken)."""
    try:
        email = validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise click.BadParameter(str(exc), param_hint="--email") from exc
    try:
        check_password(password, name=name, email=email)
    except WeakPassword as exc:
        raise click.BadParameter(str(exc), param_hint="--password") from exc
    if user_by_email(email) is not None:
        raise click.ClickException(f"a user with e-mail {email} already exists")
    refusal = training_refusal(None, Role(role))
    if refusal is not None:
        raise click.BadParameter(refusal, param_hint="--role")
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
    if leaves_no_admin(user, role=Role(role)):
        raise click.ClickException(f"{LAST_ADMIN} (flask users set-role --email ... --role admin)")
    refusal = training_refusal(user.id, Role(role))
    if refusal is not None and user.role != Role(role):
        raise click.BadParameter(refusal, param_hint="--role")
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
    if leaves_no_admin(user, active=False):
        raise click.ClickException(f"{LAST_ADMIN} (flask users set-role --email ... --role admin)")
    user.active = False
    user.revoke_sessions()
    audit.record(audit.Action.USER_CHANGED, actor="cli", detail=f"user {user.id} deactivated")
    db.session.commit()
    click.echo(f"{user.email} can no longer sign in")


@users_cli.command("set-password")
@click.option("--email", required=True)
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
def set_password(email: str, password: str) -> None:
    """Give a user a new password; their open sessions end at once."""
    user = user_by_email(email)
    if user is None:
        raise click.ClickException(f"no user with e-mail {email}")
    try:
        check_password(password, name=user.name, email=user.email)
    except WeakPassword as exc:
        raise click.BadParameter(str(exc), param_hint="--password") from exc
    user.set_password(password)
    user.revoke_sessions()
    audit.record(audit.Action.USER_CHANGED, actor="cli", detail=f"user {user.id} password set")
    db.session.commit()
    click.echo(f"{user.email} has a new password; their sessions have ended")


@users_cli.command("unlock")
@click.option("--email", default=None, help="Lift the sign-in lock of this account.")
@click.option("--address", default=None, help="Lift the sign-in lock of this client address.")
def unlock(email: str | None, address: str | None) -> None:
    """Lift a sign-in lock (too many failed attempts) before it ends by itself."""
    if not email and not address:
        raise click.UsageError("name an --email, an --address, or both")
    if email:
        user = user_by_email(email)
        lifted = throttle.unlock_account(email)
        audit.record(audit.Action.SIGN_IN_UNLOCKED, user_id=user.id if user else None, actor="cli",
                     detail=f"account {email.strip().lower()[:200]}")
        click.echo(f"{email}: " + ("sign-in unlocked" if lifted else "was not locked and had no failed sign-ins"))
    if address:
        lifted = throttle.unlock_address(address)
        audit.record(audit.Action.SIGN_IN_UNLOCKED, actor="cli", detail=f"address {address[:64]}")
        click.echo(f"{address}: " + ("sign-in unlocked" if lifted else "was not locked and had no failed sign-ins"))
    db.session.commit()
