"""The desk's HTTP request: form and query values arrive without control characters, and
URL parameters are refused (404) unless they fit what they are looked up in.

Every field is untrusted (a pasted report, an address copied from a PDF): a NUL in a value
would be refused by PostgreSQL at the commit (a 500 where the user should see their
form), and the other C0 controls have no place in anything the desk stores or shows.
Tab, line feed and carriage return stay. Applied where Werkzeug builds `request.form`
and `request.args`, so WTForms and the views' own `request.form.get` read clean values
alike; uploaded files are untouched.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, Request
from werkzeug.datastructures import ImmutableMultiDict, iter_multi_items
from werkzeug.routing import IntegerConverter, Map, UnicodeConverter

from app.ids import MAX_ID

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def printable(value: str) -> str:
    return _CONTROL.sub("", value)


class PrintableMultiDict(ImmutableMultiDict):
    def __init__(self, mapping: Any = None) -> None:
        super().__init__([(key, printable(value) if isinstance(value, str) else value)
                          for key, value in iter_multi_items(mapping or ())])


class DeskRequest(Request):
    parameter_storage_class = PrintableMultiDict


class IdConverter(IntegerConverter):
    """`<int:...>` in a URL: a row id, 1 to MAX_ID, else 404 (no query is made).

    Werkzeug's own takes any length of digits: past 32 bits PostgreSQL refuses the query,
    past 64 SQLite's driver raises OverflowError; both were 500s (review 11.7)."""

    def __init__(self, map: Map, *args: Any, **kwargs: Any) -> None:  # noqa: A002 - Werkzeug's name
        kwargs.setdefault("min", 1)
        kwargs.setdefault("max", MAX_ID)
        super().__init__(map, *args, **kwargs)


class TextConverter(UnicodeConverter):
    """`<name>` in a URL (a call reference): no control characters, else 404.

    A NUL decoded from `%00` would reach the query, which PostgreSQL refuses outright."""

    def __init__(self, map: Map, minlength: int = 1, maxlength: int | None = None, length: int | None = None) -> None:
        super().__init__(map, minlength, maxlength, length)
        self.regex = self.regex.replace("[^/]", r"[^/\x00-\x1f\x7f]")


def install_converters(app: Flask) -> None:
    """Before any route is added: rules pick their converter when they are made."""
    app.url_map.converters.update(int=IdConverter, default=TextConverter, string=TextConverter)
