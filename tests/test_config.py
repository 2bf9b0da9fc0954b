"""Settings from the environment: embedded defaults for a laptop, loud failures in production."""

from __future__ import annotations

import pytest

from app.config import ConfigError, Settings


def test_development_defaults_are_embedded(tmp_path, monkeypatch):
    for name in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "IEP_ENV"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env(tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path / 'iep-desk.sqlite3'}"
    assert settings.redis_url is None  # the embedded Redis
    assert (tmp_path / "secret_key").read_text() == settings.secret_key
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert Settings.from_env(tmp_path).secret_key == settings.secret_key  # kept, not regenerated


def test_postgresql_urls_use_psycopg_3(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://desk@db/iep")
    settings = Settings.from_env(tmp_path)
    assert settings.database_url == "postgresql+psycopg://desk@db/iep"


@pytest.mark.postgresql
def test_postgresql_plans_each_statement_for_its_values_without_jit(app):
    """Every connection the desk opens, not one statement per request: a prepared
    statement (psycopg prepares one run five times) is still planned for its values, so
    a name search keeps its index from the eleventh run on; and nothing is JIT-compiled."""
    from app.extensions import db

    with app.app_context():
        for _ in range(2):  # a second connection from the pool too
            with db.engine.connect() as first, db.engine.connect() as second:
                for conn in (first, second):
                    assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_custom_plan"
                    assert conn.exec_driver_sql("SHOW jit").scalar() == "off"


def test_production_refuses_to_start_on_embedded_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("IEP_ENV", "production")
    for name in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "SMTP_HOST"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="DATABASE_URL, REDIS_URL, SECRET_KEY, SMTP_HOST"):
        Settings.from_env(tmp_path)


def test_malformed_numbers_fail_loudly(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEWAY_PORT", "eleven")
    with pytest.raises(ConfigError, match="GATEWAY_PORT must be a whole number"):
        Settings.from_env(tmp_path)


def test_trusted_proxies_is_a_count(tmp_path, monkeypatch):
    monkeypatch.setenv("TRUSTED_PROXIES", "-1")
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES must be 0 or more"):
        Settings.from_env(tmp_path)
    monkeypatch.setenv("TRUSTED_PROXIES", "2")
    assert Settings.from_env(tmp_path).trusted_proxies == 2
    monkeypatch.delenv("TRUSTED_PROXIES")
    assert Settings.from_env(tmp_path).trusted_proxies == 0
