"""Logging that cannot be forged: newlines in logged values are escaped.

A value such as a typed e-mail address containing "\\n2026-11-28 ... sign_in ok" would
otherwise write a fake line into the log (log injection, PITFALLS "Web"). Only the
values are escaped; the message text we wrote ourselves keeps its own line breaks.
Patient data is never logged in the first place: log call references and ids only.
"""

from __future__ import annotations

import copy
import logging


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
    """Give the app's and the dev server's handlers the single-line formatter."""
    formatter = SingleLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for logger in (app_logger, logging.getLogger("werkzeug"), logging.getLogger("iep")):
        if not logger.handlers:
            logger.addHandler(logging.StreamHandler())
        for handler in logger.handlers:
            handler.setFormatter(formatter)
