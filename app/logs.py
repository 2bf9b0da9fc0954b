"""Logging that cannot be forged: newlines in logged values are escaped.

A value such as a typed e-mail address containing "\\n2026-11-28 ... sign_in ok" would
otherwise write a fake line into the log (log injection, PITFALLS "Web"). Only the
values are escaped; the message text we wrote ourselves keeps its own line breaks.
Patient data is never logged in the first place: log call references and ids only, and
an exception through `log_exception`, which leaves out its message (it may quote the data).
"""

from __future__ import annotations

import copy
import logging
import sys
import traceback


def _one_line(value: object) -> object:
    if isinstance(value, str):
        return value.replace("\r", "\\r").replace("\n", "\\n")
    return value


class SingleLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if args:
            record = copy.copy(record)
            if isinstance(args, dict):
                record.args = {k: _one_line(v) for k, v in args.items()}
            else:
                record.args = tuple(_one_line(v) for v in args)
        return super().format(record)


def configure_logging(app_logger: logging.Logger) -> None:
    """Give the app's and the dev server's handlers the single-line formatter. A process
    whose root logger has handlers already (worker.py sets one up, with this formatter;
    pytest captures there) gets none more: a handler here too printed each line twice,
    the root's copy not kept to one line."""
    formatter = SingleLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root_has_handlers = bool(logging.getLogger().handlers)
    for logger in (app_logger, logging.getLogger("werkzeug"), logging.getLogger("iep")):
        if not logger.handlers and not root_has_handlers:
            logger.addHandler(logging.StreamHandler())
        for handler in logger.handlers:
            handler.setFormatter(formatter)


def redacted(error: BaseException) -> str:
    """An exception as it may be logged: its kind, the database's SQLSTATE and where it
    was raised, never its message. A message may quote the data: PostgreSQL's
    `DETAIL: Key (nhs_number)=(…)`, `invalid input syntax … "SMITH"`, `int('…')`."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kind = type(current).__name__
        orig = getattr(current, "orig", None)
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        frames = "".join(traceback.format_tb(current.__traceback__))
        parts.append(frames + kind + (f" (SQLSTATE {sqlstate})" if sqlstate else ""))
        current = current.__cause__ or current.__context__
    return "\ncaused by:\n".join(parts)


def log_exception(logger: logging.Logger, message: str, *args: object) -> None:
    """`logger.exception` without the exception's message (see `redacted`): call it in
    an `except` block."""
    error = sys.exc_info()[1]
    if error is None:
        logger.error(message, *args)
        return
    logger.error(message + ": %s", *args, redacted(error))
