"""Migrations match the models (STYLE habit 9), and they go down and up again cleanly.

Each test migrates a scratch database of its own, empty at the start, of the kind the run
uses (IEP_TEST_DB): a new SQLite file, or a new PostgreSQL database beside the suite's.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade

from app import create_app
from app.config import Settings
from app.extensions import db
from tests.conftest import POSTGRES_ADMIN_URL, TEST_DB

# Each test makes its scratch database itself: the PostgreSQL pass keeps them all the same.
pytestmark = pytest.mark.own_database


@contextmanager
def empty_database(tmp_path: Path) -> Iterator[str]:
    """The URL of a new, empty database; dropped afterwards (PostgreSQL)."""
    if TEST_DB == "sqlite":
        yield f"sqlite:///{tmp_path / 'scratch.sqlite3'}"
        return
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"iep_scratch_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def desk_on(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[None]:
    """An app context of the desk pointed at `database_url`."""
    instance = tmp_path / "instance"
    instance.mkdir(exist_ok=True)
    settings = Settings(
        instance_path=instance, database_url=database_url, redis_url=redis_url, secret_key="migrations"
    )
    app = create_app(settings, TESTING=True)
    with app.app_context():
        try:
            yield
        finally:
            db.session.remove()
            db.engine.dispose()


def schema_differences() -> list[object]:
    """What autogenerate would write to bring the database to the models; [] when equal.

    SQLite cannot reflect expression-based indexes, so autogenerate skips them (with a
    warning): `missing_indexes` checks those by name.
    """
    with db.engine.connect() as conn, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*expression-based index")
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return compare_metadata(context, db.metadata)


def missing_indexes() -> set[str]:
    """Indexes the models declare that the database lacks, by name."""
    if db.engine.dialect.name == "postgresql":
        query = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
    else:
        query = "SELECT name FROM sqlite_master WHERE type = 'index'"
    with db.engine.connect() as conn:
        present = set(conn.scalars(sa.text(query)))
    declared = {index.name for table in db.metadata.tables.values() for index in table.indexes
                if _made_on(index, db.engine.dialect.name)}
    return declared - present


def _made_on(index: sa.Index, dialect: str) -> bool:
    """False for an index the models make on another database only (`Index.ddl_if`)."""
    only = getattr(index, "_ddl_if", None)
    return only is None or only.dialect in (None, dialect)


def tables() -> set[str]:
    return set(sa.inspect(db.engine).get_table_names()) - {"alembic_version"}


def triggers() -> set[str]:
    """Triggers are invisible to autogenerate: the audit trail's are checked by name."""
    if db.engine.dialect.name == "postgresql":
        query = "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
    else:
        query = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
    with db.engine.connect() as conn:
        return set(conn.scalars(sa.text(query)))


def test_upgrade_on_an_empty_database_gives_the_models_schema(tmp_path, redis_url):
    with empty_database(tmp_path) as url, desk_on(url, redis_url, tmp_path):
        assert tables() == set()
        upgrade()
        assert tables() == set(db.metadata.tables)
        assert schema_differences() == []
        assert missing_indexes() == set()


def test_downgrade_to_base_and_upgrade_again(tmp_path, redis_url):
    with empty_database(tmp_path) as url, desk_on(url, redis_url, tmp_path):
        upgrade()
        audit_triggers = triggers()
        assert audit_triggers, "the audit trail's append-only triggers are missing"

        downgrade(revision="base")
        assert tables() == set()
        assert triggers() == set()

        upgrade()
        assert schema_differences() == []
        assert missing_indexes() == set()
        assert triggers() == audit_triggers


def test_0010_adds_the_truncate_trigger_on_postgresql_only(tmp_path, redis_url):
    with empty_database(tmp_path) as url, desk_on(url, redis_url, tmp_path):
        upgrade()
        at_head = triggers()
        downgrade(revision="0009")
        # SQLite has no TRUNCATE (its DELETE trigger covers `DELETE FROM audit_events`).
        expected = {"audit_events_no_truncate"} if db.engine.dialect.name == "postgresql" else set()
        assert at_head - triggers() == expected
        assert triggers() <= at_head
        upgrade()
        assert triggers() == at_head
