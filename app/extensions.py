"""Extension singletons, bound to the app in `create_app`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from flask import Flask, current_app
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from redis import Redis
from sqlalchemy import CursorResult, MetaData
from sqlalchemy.orm import DeclarativeBase

from app.embedded_redis import ensure_embedded_redis

# Named constraints, so Alembic can alter them on SQLite and PostgreSQL alike.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


db = SQLAlchemy(model_class=Base)

# The base of every model. At run time it is db.Model (our Base with Flask-SQLAlchemy's
# mixins, bound to `db`). mypy cannot take an attribute as a base class (python/mypy#8603:
# "Name db.Model is not defined"), so to the checker it is the declarative Base it derives from.
if TYPE_CHECKING:
    Model = Base
else:
    Model = db.Model


def rowcount(result: sa.Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched. `Session.execute` is typed to return a Result;
    for these statements it is a CursorResult, the class that has `rowcount`."""
    return cast(CursorResult[Any], result).rowcount


@sa.event.listens_for(sa.engine.Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001
    """SQLite: enforce foreign keys, let readers and one writer work at once (WAL)."""
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()
migrate = Migrate()
csrf = CSRFProtect()
login_manager = LoginManager()


def init_redis(app: Flask) -> None:
    """Resolve the Redis URL (starting the embedded server if none is configured)."""
    settings = app.config["IEP_SETTINGS"]
    url = settings.redis_url
    if url is None:
        url = ensure_embedded_redis(settings.instance_path)
    app.config["REDIS_URL_RESOLVED"] = url


def redis_conn() -> Redis:
    """The app's Redis connection (one client per process, created on first use)."""
    conn = current_app.extensions.get("iep_redis")
    if conn is None:
        conn = Redis.from_url(
            current_app.config["REDIS_URL_RESOLVED"],
            socket_connect_timeout=2,
            socket_timeout=5,
        )
        current_app.extensions["iep_redis"] = conn
    return conn
