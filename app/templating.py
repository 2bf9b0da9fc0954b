"""Jinja filters and globals shared by pages, partials and printables."""

from __future__ import annotations

from datetime import date, datetime

from flask import Flask

from app.intake.validators import format_nhs_number
from app.timeutil import as_local


def _date(value: date | datetime | None, fmt: str = "%d/%m/%Y") -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        value = as_local(value)
    return value.strftime(fmt)


def _datetime(value: datetime | None) -> str:
    if value is None:
        return ""
    return as_local(value).strftime("%d/%m/%Y %H:%M")


def install_template_helpers(app: Flask) -> None:
    app.jinja_env.filters["nhs"] = format_nhs_number
    app.jinja_env.filters["ukdate"] = _date
    app.jinja_env.filters["ukdatetime"] = _datetime
