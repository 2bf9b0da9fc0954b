"""The audit trail cannot be emptied (security review 11.8), under the roles of README
"Running in production".

On PostgreSQL (marked `postgresql`: roles, privileges and TRUNCATE exist only there, so these
run in the PostgreSQL pass and are deselected on SQLite) the module builds the production
arrangement from nothing: a login role that is not a superuser owns a scratch database and
migrates it through the desk's own `upgrade`, then runs scripts/app_role.sql for a second
login role, the one the desk runs as. Both roles are made for this run and dropped with the
database. The desk, pointed at its role, works and audits; that role cannot rewrite, empty or
unprotect the trail; the owner cannot empty it either, directly or through a CASCADE.

Unmarked tests run in both passes: SQLite has no TRUNCATE, and its unqualified DELETE (which
SQLite would otherwise run as a truncate) meets the DELETE trigger.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_migrate import upgrade

from app import create_app
from app.audit import AuditEvent
from app.config import Settings
from app.extensions import db
from tests.conftest import POSTGRES_ADMIN_URL, app_role_statements, post_form
from tests.forms_data import valid_import

ROOT = Path(__file__).resolve().parent.parent
APP_ROLE_SQL = ROOT / "scripts" / "app_role.sql"
INSUFFICIENT_PRIVILEGE = "42501"
RAISE_EXCEPTION = "P0001"  # what the trigger function's RAISE EXCEPTION reports


@dataclass(frozen=True)
class Roles:
    owner: str  # the role that owns the tables and ran the migrations
    app: str  # the role the desk runs as
    owner_url: str
    app_url: str


def _desk(database_url: str, redis_url: str, instance: Path) -> Flask:
    instance.mkdir(parents=True, exist_ok=True)
    settings = Settings(instance_path=instance, database_url=database_url, redis_url=redis_url,
                        secret_key="audit-" + uuid.uuid4().hex)
    return create_app(settings, TESTING=True)


@pytest.fixture(scope="module")
def roles(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Roles]:
    """A scratch database owned and migrated by one role, with the desk's grants for another."""
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    run = uuid.uuid4().hex[:8]
    owner, app_role = f"iep_owner_{run}", f"iep_app_{run}"
    owner_pw, app_pw = secrets.token_hex(16), secrets.token_hex(16)
    name = f"iep_roles_{run}"
    base = sa.make_url(POSTGRES_ADMIN_URL).set(database=name)
    owner_url = base.set(username=owner, password=owner_pw).render_as_string(hide_password=False)
    app_url = base.set(username=app_role, password=app_pw).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {owner} LOGIN PASSWORD '{owner_pw}'"))
        conn.execute(sa.text(f"CREATE ROLE {app_role} LOGIN PASSWORD '{app_pw}'"))
        conn.execute(sa.text(f'CREATE DATABASE "{name}" OWNER {owner}'))
    try:
        # `flask --app wsgi db upgrade` with DATABASE_URL naming the owner, then the grants.
        desk = _desk(owner_url, redis_url, tmp_path_factory.mktemp("owner"))
        with desk.app_context():
            upgrade()
            db.engine.dispose()
        owner_engine = sa.create_engine(owner_url)
        with owner_engine.begin() as conn:
            conn.exec_driver_sql(app_role_statements(app_role))
        owner_engine.dispose()
        yield Roles(owner=owner, app=app_role, owner_url=owner_url, app_url=app_url)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {app_role}"))
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {owner}"))
        admin.dispose()


def _connect(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.NullPool)


def _audit_ids(url: str) -> list[int]:
    engine = _connect(url)
    with engine.connect() as conn:
        ids = list(conn.scalars(sa.text("SELECT id FROM audit_events ORDER BY id")))
    engine.dispose()
    return ids


def _append_one(url: str) -> None:
    """INSERT is what the desk's role may do to the trail; every test starts with a row."""
    engine = _connect(url)
    with engine.begin() as conn:
        conn.execute(sa.insert(AuditEvent.__table__).values(
            at=sa.func.now(), actor="test", action="test", detail="", remote_addr=""))
    engine.dispose()


def _refusal(url: str, statement: str) -> tuple[str, str]:
    """Run `statement` as the role in `url`; (SQLSTATE, message) of its refusal."""
    engine = _connect(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(statement)
    except sa.exc.DBAPIError as exc:
        return exc.orig.sqlstate, exc.orig.diag.message_primary  # psycopg's error
    finally:
        engine.dispose()
    pytest.fail(f"{statement!r} was allowed")


@pytest.mark.postgresql
def test_the_desk_works_and_audits_under_a_role_that_does_not_own_its_tables(roles, redis_url, tmp_path):
    desk = _desk(roles.app_url, redis_url, tmp_path / "instance")
    with desk.app_context():
        who = db.session.execute(sa.text(
            "SELECT current_user, pg_get_userbyid(relowner), rolsuper FROM pg_class, pg_roles "
            "WHERE relname = 'audit_events' AND rolname = current_user")).one()
        assert tuple(who) == (roles.app, roles.owner, False)

        runner = desk.test_cli_runner()
        created = runner.invoke(args=["users", "create", "--email", "req@test.uhl", "--name", "Dr Req",
                                      "--role", "requester", "--password", "correct-horse-9"])
        assert created.exit_code == 0, created.output
        csv = tmp_path / "pas.csv"
        csv.write_text(
            "s_number,nhs_number,family_name,given_name,dob,gender,address_line1,address_line2,town,county,postcode\n"
            "S1234567,9990000018,SMITH,Margaret,1948-03-14,Female,12 Welford Road,,Leicester,,LE2 7AA\n")
        imported = runner.invoke(args=["pas", "import", str(csv)])
        assert imported.exit_code == 0, imported.output

        client = desk.test_client()
        signed_in = post_form(client, "/login", {"email": "req@test.uhl", "password": "correct-horse-9"})
        assert signed_in.status_code == 302, signed_in.get_data(as_text=True)
        submitted = post_form(client, "/requests/new/import", valid_import())
        assert submitted.status_code == 302, submitted.get_data(as_text=True)
        assert client.get(submitted.headers["Location"]).status_code == 200

        actions = db.session.scalars(sa.select(AuditEvent.action).order_by(AuditEvent.id)).all()
        db.session.remove()
        db.engine.dispose()
    assert actions == ["user_created", "pas_import", "sign_in", "submit", "view"]


@pytest.mark.postgresql
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET action = 'nothing'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "TRUNCATE users CASCADE",
        "DROP TRIGGER audit_events_no_rewrite ON audit_events",
        "DROP TRIGGER audit_events_no_truncate ON audit_events",
        "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_truncate",
        "ALTER TABLE audit_events DISABLE TRIGGER USER",
        "ALTER TABLE audit_events RENAME TO audit_events_old",
        "DROP TABLE audit_events",
        "CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger"
        " AS $$ BEGIN RETURN NULL; END; $$ LANGUAGE plpgsql",
        "DROP FUNCTION audit_events_append_only() CASCADE",
        # What the test suite's own cleanup does as a superuser (tests/conftest.py).
        "SET LOCAL session_replication_role = replica",
    ],
    ids=["update", "delete", "truncate", "truncate_users_cascade", "drop_row_trigger",
         "drop_truncate_trigger", "disable_truncate_trigger", "disable_user_triggers", "rename_table",
         "drop_table", "replace_trigger_function", "drop_trigger_function", "replica_mode"],
)
def test_the_desks_role_can_neither_rewrite_nor_unprotect_the_trail(roles, statement):
    _append_one(roles.app_url)
    before = _audit_ids(roles.app_url)
    sqlstate, message = _refusal(roles.app_url, statement)
    assert sqlstate == INSUFFICIENT_PRIVILEGE, message  # refused for want of the privilege
    assert _audit_ids(roles.owner_url) == before


@pytest.mark.postgresql
@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE audit_events",
        "TRUNCATE audit_events RESTART IDENTITY",
        "TRUNCATE users CASCADE",
        "TRUNCATE requests CASCADE",
        "UPDATE audit_events SET action = 'nothing'",
        "DELETE FROM audit_events",
    ],
    ids=["truncate", "truncate_restart_identity", "truncate_users_cascade", "truncate_requests_cascade",
         "update", "delete"],
)
def test_the_owner_cannot_empty_the_trail_either(roles, statement):
    _append_one(roles.app_url)
    before = _audit_ids(roles.owner_url)
    sqlstate, message = _refusal(roles.owner_url, statement)
    assert (sqlstate, message) == (RAISE_EXCEPTION, "the audit trail is append-only")
    assert _audit_ids(roles.owner_url) == before


def test_an_unqualified_delete_is_refused_on_either_database(app, make_user, client):
    """SQLite runs `DELETE FROM t` without a WHERE as a truncate, but never on a table with
    triggers; on PostgreSQL the suite's desk runs as a role without DELETE there (conftest)."""
    user = make_user("requester")
    post_form(client, "/login", {"email": user.email, "password": "correct-horse-9"})
    refusal = "permission denied" if db.engine.dialect.name == "postgresql" else "append-only"
    with pytest.raises(sa.exc.DBAPIError, match=refusal), db.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_events"))
    assert db.session.scalars(sa.select(AuditEvent.action)).all() == ["sign_in"]


def test_the_readme_gives_the_grants_the_tests_run():
    """README's statements are scripts/app_role.sql's, which the tests above run."""
    readme = (ROOT / "README.md").read_text()
    statements = [line for line in APP_ROLE_SQL.read_text().splitlines() if re.match(r"(GRANT|REVOKE) ", line)]
    assert len(statements) == 5
    missing = [line for line in statements if line.replace(':"app_role"', "iep_app") not in readme]
    assert missing == []
