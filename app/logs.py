"""Logging that cannot be forged: newlines in logged values are escaped.

A value such as a typed e-mail address containing "\\n2026-11-28 ... sign_in ok" would
otherwise write a fake line into the log (log injection, PITFALLS "Web"). Patient data
is never logged in the first place: log call references and ids only.
"""

from __future__ import annotations

import logging


class SingleLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        head, sep, trace = text.partition("\nTraceback")
        head = head.replace("\r", "\\r").replace("\n", "\\n")
        return head + (sep + trace if sep else "")


def configure_logging(app_logger: logging.Logger) -> None:
    """Give the app's and the dev server's handlers the single-line formatter."""
    formatter = SingleLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for logger in (app_logger, logging.getLogger("werkzeug"), logging.getLogger("iep")):
        if not logger.handlers:
            handler = logging.StreamHandler()
            logger.addHandler(handler)
        for handler in logger.handlers:
            handler.setFormatter(formatter)
