"""Loading the PAS extract (CSV) into the register.

Two steps, shared by `flask --app wsgi pas import` and the admin's upload (/admin/pas):
`check_extract` reads the file and says what it would do (nothing is written), and
`apply_extract` does exactly that. The rules, in the order a row meets them:

- the file is UTF-8 text (a byte-order mark is allowed), CSV, with a header of exactly
  COLUMNS (in any order) and at least one row;
- each row has as many fields as the header; a bad row is named by its line and column
  and left out: the good rows load (the import has always worked so);
- an S number that appears twice is refused on its second line;
- an NHS number another patient holds (on the register, or on an earlier line) is refused;
- a row for a registered S number updates that patient (or leaves them unchanged when
  every value is the same); a new one is added. Nobody is removed: a patient missing from
  the extract stays on the register.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, cast

import sqlalchemy as sa

from app.extensions import db
from app.patients.models import Patient
from app.requests.validators import FieldError, clean_nhs_number, clean_s_number
from app.timeutil import utcnow

COLUMNS = (
    "s_number", "nhs_number", "family_name", "given_name", "dob", "gender",
    "address_line1", "address_line2", "town", "county", "postcode",
)
_DATE_FORMATS = ("%Y-%m-%d", "%d/%m/%Y")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TEXT = ("family_name", "given_name", "gender", "address_line1", "address_line2", "town", "county", "postcode")
_CHUNK = 1000  # values in one IN (...) look-up, and rows in one INSERT/UPDATE batch


@dataclass(frozen=True)
class BadLine:
    """A refused line: its number in the file (the header is line 1), the column at fault
    ("" for the whole row) and the reason, which may quote the file's values: shown to
    whoever imports, never logged or audited."""

    line: int
    column: str
    message: str


@dataclass
class ExtractCheck:
    """What applying an extract would do. `fatal` is set when the whole file is refused
    (not UTF-8, not CSV, wrong columns, empty): then nothing is applied."""

    rows: int = 0  # data rows read
    added: list[dict[str, Any]] = field(default_factory=list)  # new patients' values
    updated: list[dict[str, Any]] = field(default_factory=list)  # values with the patient's `id`
    unchanged: int = 0
    not_in_file: int = 0  # registered patients no good row names: they stay as they are
    errors: list[BadLine] = field(default_factory=list)
    fatal: str = ""
    fatal_kind: str = ""  # for the audit: encoding, csv, header, empty (never the message)
    plan: str = ""  # a digest of what each line would do (no values): the preview's, checked on apply

    @property
    def rejected(self) -> int:
        return len(self.errors)

    @property
    def counts(self) -> str:
        """The figures, for the audit and the CLI; no patient values."""
        return (f"added {len(self.added)}, updated {len(self.updated)}, unchanged {self.unchanged}, "
                f"rejected {self.rejected}")


class _RowError(FieldError):
    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column = column


def _parse_date(raw: str) -> date:
    if _ISO_DATE.fullmatch(raw):  # the common case, without strptime's cost (100,000 rows)
        try:
            return date(int(raw[:4]), int(raw[5:7]), int(raw[8:]))
        except ValueError:
            pass  # the same message as strptime's refusal below
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(raw.strip(), fmt).date()
        except ValueError:
            continue
    raise _RowError("dob", f"dob {raw!r} is not a date (use YYYY-MM-DD or DD/MM/YYYY)")


def _limits() -> dict[str, int]:
    return {name: cast(sa.String, Patient.__table__.c[name].type).length or 0 for name in _TEXT}


def _clean_row(row: dict[str, str], today: date, limits: dict[str, int]) -> dict[str, Any]:
    raw = {key: (row.get(key) or "").strip() for key in COLUMNS}
    values: dict[str, Any] = dict(raw)  # the cleaned values, not all of them strings
    try:
        values["s_number"] = clean_s_number(raw["s_number"])
    except FieldError as exc:
        raise _RowError("s_number", f"s_number: {exc}") from exc
    if raw["nhs_number"]:
        try:
            values["nhs_number"] = clean_nhs_number(raw["nhs_number"])
        except FieldError as exc:
            raise _RowError("nhs_number", f"nhs_number: {exc}") from exc
    else:
        values["nhs_number"] = None
    for name in ("family_name", "given_name", "dob"):
        if not raw[name]:
            raise _RowError(name, f"{name} is empty")
    dob = _parse_date(raw["dob"])
    if dob > today:
        raise _RowError("dob", "dob is in the future")
    values["dob"] = dob
    values["postcode"] = raw["postcode"].upper()
    for name, limit in limits.items():
        # PostgreSQL refuses a longer value at the commit; say which line and column first.
        if len(values[name]) > limit:
            raise _RowError(name, f"{name} is longer than {limit} characters")
    return values


def _header_problem(header: Sequence[str]) -> str:
    names = [name.strip() for name in header]
    repeated = sorted({name for name in names if names.count(name) > 1})
    missing = [c for c in COLUMNS if c not in names]
    unknown = [name for name in names if name not in COLUMNS]
    problems = []
    if missing:
        problems.append("missing column(s): " + ", ".join(missing))
    if unknown:
        shown = [name[:40] for name in unknown[:5]] + (["…"] if len(unknown) > 5 else [])
        problems.append("column(s) the extract does not have: " + ", ".join(shown))
    if repeated:
        problems.append("repeated column(s): " + ", ".join(repeated))
    if problems:
        return ("The header is wrong: " + "; ".join(problems) + ". An extract has exactly these columns: "
                + ", ".join(COLUMNS) + ".")
    return ""


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start:start + _CHUNK]


class _Refused(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _open(data: bytes) -> tuple[Any, list[str], int]:
    """A CSV reader past a good header, the header's names and the file's physical lines;
    raises _Refused for a file refused as a whole (csv.Error is the caller's)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Refused("encoding", f"The file is not UTF-8 text ({exc.reason} at byte {exc.start}): "
                                   "save the extract as UTF-8 CSV.") from exc
    if "\x00" in text:  # csv reads NUL since Python 3.11; PostgreSQL refuses it in text
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise _Refused("csv", f"The file is not a CSV file the desk can read (line {line} contains a NUL byte).")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header = next(reader, None)
    if header is None or not any(cell.strip() for cell in header):
        raise _Refused("empty", "The file is empty: no header, no rows.")
    problem = _header_problem(header)
    if problem:
        raise _Refused("header", problem)
    return reader, [name.strip() for name in header], text.count("\n") or 1


def screen_extract(data: bytes) -> tuple[str, str]:
    """The checks that refuse a file as a whole and cost little (encoding, CSV, header, a
    first row): ("", "") when it passes, else (the message, its kind for the audit)."""
    try:
        reader, _names, _lines = _open(data)
        if not any(any(cell.strip() for cell in fields) for fields in reader):
            return "The file has a header but no rows.", "empty"
    except _Refused as refused:
        return refused.message, refused.kind
    except csv.Error as exc:
        return f"The file is not a CSV file the desk can read ({exc}).", "csv"
    return "", ""


Progress = Callable[[int, int], None]  # (lines read, lines in the file)
_BEAT = 5000  # rows between two calls of `progress`


def check_extract(data: bytes, today: date, progress: Progress | None = None) -> ExtractCheck:
    """Read an extract and say what applying it would do, line by line; writes nothing.

    Reads the register in batches (one query per thousand S or NHS numbers), so a large
    extract costs a few hundred queries, not one per row."""
    check = ExtractCheck()
    good: list[tuple[int, dict[str, Any]]] = []
    try:
        reader, names, lines = _open(data)
        limits = _limits()
        seen_s: dict[str, int] = {}
        for fields in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in fields):  # a blank line
                continue
            check.rows += 1
            if progress is not None and check.rows % _BEAT == 0:
                progress(line, lines)
            if len(fields) != len(names):
                more = "more" if len(fields) > len(names) else "fewer"
                check.errors.append(BadLine(line, "", f"row has {more} fields than the header"))
                continue
            try:
                values = _clean_row(dict(zip(names, fields, strict=True)), today, limits)
            except _RowError as exc:
                check.errors.append(BadLine(line, exc.column, str(exc)))
                continue
            s_number = values["s_number"]
            if s_number in seen_s:
                check.errors.append(BadLine(line, "s_number", f"s_number {s_number} repeats line {seen_s[s_number]}"))
                continue
            seen_s[s_number] = line
            good.append((line, values))
    except _Refused as refused:
        check.fatal, check.fatal_kind = refused.message, refused.kind
        if refused.kind == "header":
            check.errors.append(BadLine(1, "", refused.message))
        return check
    except csv.Error as exc:
        check.fatal = f"The file is not a CSV file the desk can read (line {reader.line_num}: {exc})."
        check.fatal_kind = "csv"
        return check
    if check.rows == 0:
        check.fatal, check.fatal_kind = "The file has a header but no rows.", "empty"
        return check
    _compare_with_register(check, good)
    if progress is not None:
        progress(lines, lines)
    return check


def _compare_with_register(check: ExtractCheck, good: list[tuple[int, dict[str, Any]]]) -> None:
    """Sort the good rows into added / updated / unchanged, in file order, refusing an NHS
    number another patient holds, as if each earlier row had already been saved."""
    columns = [Patient.__table__.c[name] for name in COLUMNS]
    registered: dict[str, tuple[Any, ...]] = {}
    for part in _chunks([values["s_number"] for _, values in good]):
        for row in db.session.execute(sa.select(Patient.id, *columns).where(Patient.s_number.in_(part))):
            registered[row.s_number] = tuple(row)
    holders: dict[str, set[str]] = {}
    nhs_numbers = sorted({values["nhs_number"] for _, values in good if values["nhs_number"]})
    for part in _chunks(nhs_numbers):
        for nhs, s_number in db.session.execute(
                sa.select(Patient.nhs_number, Patient.s_number).where(Patient.nhs_number.in_(part))):
            holders.setdefault(nhs, set()).add(s_number)
    plan = hashlib.sha256()
    for line, values in good:
        s_number, nhs = values["s_number"], values["nhs_number"]
        others = holders.get(nhs, set()) - {s_number} if nhs else set()
        if others:
            check.errors.append(BadLine(line, "nhs_number", f"nhs_number already belongs to {min(others)}"))
            continue
        existing = registered.get(s_number)
        old_nhs = existing[COLUMNS.index("nhs_number") + 1] if existing else None
        if old_nhs:
            holders.get(old_nhs, set()).discard(s_number)
        if nhs:
            holders.setdefault(nhs, set()).add(s_number)
        if existing is None:
            check.added.append(values)
            plan.update(f"a{line};".encode())
        elif tuple(existing[1:]) == tuple(values[name] for name in COLUMNS):
            check.unchanged += 1
            plan.update(f"u{line};".encode())
        else:
            check.updated.append({**values, "id": existing[0]})
            plan.update(f"c{line};".encode())
    check.errors.sort(key=lambda bad: bad.line)
    for bad in check.errors:
        plan.update(f"x{bad.line}:{bad.column};".encode())
    check.plan = plan.hexdigest()
    total = db.session.scalar(sa.select(sa.func.count()).select_from(Patient)) or 0
    check.not_in_file = total - len(check.updated) - check.unchanged


def apply_extract(check: ExtractCheck) -> None:
    """Add and update the patients `check` found, in batches, in the caller's transaction
    (the caller commits). Idempotent in effect: applying the same file again finds every
    row unchanged. Refuses a check with a fatal problem."""
    if check.fatal:
        raise ValueError("an extract refused as a whole cannot be applied")
    now = utcnow()
    for part in _chunks(check.added):
        db.session.execute(sa.insert(Patient), [{**values, "updated_at": now} for values in part])
    for part in _chunks(check.updated):
        db.session.execute(sa.update(Patient), [{**values, "updated_at": now} for values in part])
