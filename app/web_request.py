"""The desk's HTTP request: form and query values arrive without control characters.

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

from flask import Request
from werkzeug.datastructures import ImmutableMultiDict, iter_multi_items

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def printable(value: str) -> str:
    return _CONTROL.sub("", value)


class PrintableMultiDict(ImmutableMultiDict):
    def __init__(self, mapping: Any = None) -> None:
        super().__init__([(key, printable(value) if isinstance(value, str) else value)
                          for key, value in iter_multi_items(mapping or ())])


class DeskRequest(Request):
    parameter_storage_class = PrintableMultiDict
