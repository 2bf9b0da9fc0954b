"""Typed settings from the environment, with embedded defaults for a laptop.

Unset `DATABASE_URL` means SQLite in the instance folder, unset `REDIS_URL` means an
embedded Redis kept in the instance folder, unset `SECRET_KEY` means a key generated
once into the instance folder. Production sets all three and `IEP_ENV=production`,
which refuses to start on any embedded default.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path


class ConfigError(RuntimeError):
    """A setting is missing or malformed; raised at start-up, never mid-request."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from exc


def _env_count(name: str, default: int) -> int:
    value = _env_int(name, default)
    if value < 0:
        raise ConfigError(f"{name} must be 0 or more, got {value}")
    return value


_DURATION = re.compile(r"([1-9][0-9]*)\s*([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# PAS register look-ups per user (issue 13.8): 20 in any 15 minutes, 150 in any day.
DEFAULT_PAS_LOOKUP_WINDOWS = "20/15m,150/1d"


def parse_windows(name: str, raw: str) -> tuple[tuple[int, int], ...]:
    """"20/15m,150/1d" -> ((20, 900), (150, 86400)): at most COUNT in any DURATION (s, m, h, d)."""
    windows: list[tuple[int, int]] = []
    for item in raw.split(","):
        count, slash, duration = item.strip().partition("/")
        match = _DURATION.fullmatch(duration.strip())
        if not slash or not count.strip().isdigit() or not count.isascii() or int(count) < 1 or match is None:
            raise ConfigError(f"{name} must be COUNT/DURATION pairs such as {DEFAULT_PAS_LOOKUP_WINDOWS!r}, "
                              f"got {raw!r}")
        windows.append((int(count), int(match.group(1)) * _UNIT_SECONDS[match.group(2)]))
    return tuple(windows)


def _load_or_create_secret(instance: Path) -> str:
    path = instance / "secret_key"
    if path.exists():
        return path.read_text().strip()
    instance.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    # Created 0600: the key signs every session cookie.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


@dataclass
class Settings:
    """Everything the desk reads from its environment, resolved once."""

    instance_path: Path
    database_url: str
    redis_url: str | None  # None: embedded Redis in the instance folder
    secret_key: str
    production: bool = False
    session_idle_minutes: int = 30
    smtp: dict[str, str] = field(default_factory=dict)
    local_pacs_node: str = "UHLPACSWFM01"
    gateway_ae_title: str = "IEPDESK"
    gateway_port: int = 11112
    # Loopback by default; production sets the address the exchange gateway reaches.
    gateway_bind: str = "127.0.0.1"
    timezone: str = "Europe/London"
    # Transfers (DESIGN "Transfers").
    data_dir: Path | None = None  # gateway store and staging; default: the instance folder
    transfer_max_attempts: int = 5
    transfer_stall_seconds: int = 120
    batch_window: str = "20:00-07:00"
    auto_download: bool = False
    dicom_timeout_seconds: int = 30
    # The service desk's own mailbox: told when a transfer fails, instance by instance.
    # Default: SMTP_FROM (the desk's address), else no such e-mail.
    desk_email: str = ""
    # A pushed study counts as complete once its sender released the association and
    # nothing more came for this long (issue 8.3).
    arrival_quiet_seconds: int = 120
    # The trauma route's one destination (guideline 2.8, Appendix 4 step 14): a node
    # register name, locked on the radiologist's screen.
    trauma_node: str = "NUH Radiology PACS"
    # PAS register look-ups from the request forms, per user: (at most, in seconds) pairs.
    pas_lookup_windows: tuple[tuple[int, int], ...] = parse_windows("PAS_LOOKUP_WINDOWS", DEFAULT_PAS_LOOKUP_WINDOWS)
    # Guideline section 3 (issue 14.7): the desk roles (analyst, AM radiology) are given only
    # to someone with a record in the training register.
    desk_requires_training: bool = False
    # How many reverse proxies stand in front of the web server (0: none, the default). Only
    # then are their X-Forwarded-For/-Proto/-Host headers believed: the sign-in lock and the
    # audit trail's address are the client's, not the proxy's (which would lock every user
    # out at once after one person's failed sign-ins). With none, the headers are ignored:
    # anyone can send them.
    trusted_proxies: int = 0

    @property
    def storage_root(self) -> Path:
        return self.data_dir or self.instance_path

    @classmethod
    def from_env(cls, instance_path: Path) -> Settings:
        production = os.environ.get("IEP_ENV", "development") == "production"
        database_url = os.environ.get("DATABASE_URL") or (
            f"sqlite:///{instance_path / 'iep-desk.sqlite3'}"
        )
        if database_url.startswith("postgresql://"):
            # psycopg 3 is the driver we ship; "postgresql://" alone would ask for psycopg2.
            database_url = "postgresql+psycopg://" + database_url[len("postgresql://") :]
        redis_url = os.environ.get("REDIS_URL") or None
        secret_key = os.environ.get("SECRET_KEY") or ""
        if production:
            missing = [
                name
                for name, value in (
                    ("DATABASE_URL", os.environ.get("DATABASE_URL")),
                    ("REDIS_URL", redis_url),
                    ("SECRET_KEY", secret_key),
                    ("SMTP_HOST", os.environ.get("SMTP_HOST")),
                )
                if not value
            ]
            if missing:
                raise ConfigError(
                    "IEP_ENV=production needs " + ", ".join(missing) + " set; "
                    "embedded defaults are for development only"
                )
        if not secret_key:
            secret_key = _load_or_create_secret(instance_path)
        smtp = {
            key[len("SMTP_") :].lower(): value
            for key, value in os.environ.items()
            if key.startswith("SMTP_")
        }
        return cls(
            instance_path=instance_path,
            database_url=database_url,
            redis_url=redis_url,
            secret_key=secret_key,
            production=production,
            session_idle_minutes=_env_int("SESSION_IDLE_MINUTES", 30),
            smtp=smtp,
            local_pacs_node=os.environ.get("LOCAL_PACS_NODE", "UHLPACSWFM01"),
            gateway_ae_title=os.environ.get("GATEWAY_AE_TITLE", "IEPDESK"),
            gateway_port=_env_int("GATEWAY_PORT", 11112),
            gateway_bind=os.environ.get("GATEWAY_BIND", "127.0.0.1"),
            data_dir=Path(os.environ["IEP_DATA_DIR"]) if os.environ.get("IEP_DATA_DIR") else None,
            transfer_max_attempts=_env_int("TRANSFER_MAX_ATTEMPTS", 5),
            transfer_stall_seconds=_env_int("TRANSFER_STALL_SECONDS", 120),
            batch_window=os.environ.get("BATCH_WINDOW", "20:00-07:00"),
            auto_download=os.environ.get("AUTO_DOWNLOAD", "0").lower() in {"1", "true", "yes"},
            dicom_timeout_seconds=_env_int("DICOM_TIMEOUT_SECONDS", 30),
            desk_email=(os.environ.get("DESK_EMAIL") or smtp.get("from") or "").strip(),
            arrival_quiet_seconds=_env_int("ARRIVAL_QUIET_SECONDS", 120),
            trauma_node=os.environ.get("TRAUMA_NODE") or "NUH Radiology PACS",
            pas_lookup_windows=parse_windows(
                "PAS_LOOKUP_WINDOWS", os.environ.get("PAS_LOOKUP_WINDOWS") or DEFAULT_PAS_LOOKUP_WINDOWS),
            desk_requires_training=os.environ.get("DESK_REQUIRES_TRAINING", "0").lower() in {"1", "true", "yes"},
            trusted_proxies=_env_count("TRUSTED_PROXIES", 0),
        )

    def engine_options(self) -> dict[str, object]:
        # hide_parameters: a failed statement's message would otherwise quote its bound
        # values (a patient's name, NHS number, date of birth, address) into the log.
        options: dict[str, object] = {"pool_pre_ping": True, "hide_parameters": True}
        if self.database_url.startswith("postgresql"):
            # jit=off: the queue's short queries cost more to JIT-compile than to run
            # (measured: tab counts 170 ms with JIT, 50 ms without, at 100,000 requests).
            # plan_cache_mode: psycopg prepares a statement run five times; after five more
            # PostgreSQL may keep one generic plan for any values, made without knowing
            # them: a name search's LIKE then read the whole table instead of the name
            # index (12 ms became 90 at 100,000 requests, from the eleventh search on),
            # and a keyset page or a status list can lose its index the same way. Each
            # statement is planned for its values instead (about a millisecond), set once
            # per connection rather than by a statement per request.
            options["connect_args"] = {"options": "-c jit=off -c plan_cache_mode=force_custom_plan"}
        return options

    def flask_config(self) -> dict[str, object]:
        """The Flask config keys these settings imply."""
        return {
            "SECRET_KEY": self.secret_key,
            "SQLALCHEMY_DATABASE_URI": self.database_url,
            "SQLALCHEMY_ENGINE_OPTIONS": self.engine_options(),
            "PERMANENT_SESSION_LIFETIME": timedelta(minutes=self.session_idle_minutes),
            "SESSION_REFRESH_EACH_REQUEST": True,
            "SESSION_COOKIE_HTTPONLY": True,
            "SESSION_COOKIE_SAMESITE": "Lax",
            "SESSION_COOKIE_SECURE": self.production,
            "SESSION_COOKIE_NAME": "iep_desk_session",
            # No "remember me": a shared ward PC must not keep anyone signed in.
            "REMEMBER_COOKIE_DURATION": timedelta(seconds=0),
            # The CSRF token lives as long as the (short, revocable) session, so a page
            # left open keeps working while its session does; see PITFALLS "Web".
            "WTF_CSRF_TIME_LIMIT": None,
            "WTF_CSRF_SSL_STRICT": self.production,
            "MAX_CONTENT_LENGTH": 20 * 1024 * 1024,
            "IEP_SETTINGS": self,
        }
