"""Loading the PAS extract (CSV) into the register, and checking a request against it."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

import sqlalchemy as sa

from app.extensions import db
from app.patients.models import Patient
from app.requests.validators import FieldError, clean_nhs_number, clean_s_number

COLUMNS = (
    "s_number", "nhs_number", "family_name", "given_name", "dob", "gender",
    "address_line1", "address_line2", "town", "county", "postcode",
)
_DATE_FORMATS = ("%Y-%m-%d", "%d/%m/%Y")


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)


def _parse_date(raw: str) -> date:
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(raw.strip(), fmt).date()
        except ValueError:
            continue
    raise FieldError(f"dob {raw!r} is not a date (use YYYY-MM-DD or DD/MM/YYYY)")


def _clean_row(row: dict[str, str], today: date) -> dict[str, object]:
    raw = {key: (row.get(key) or "").strip() for key in COLUMNS}
    values: dict[str, object] = dict(raw)  # the cleaned values, not all of them strings
    try:
        values["s_number"] = clean_s_number(raw["s_number"])
    except FieldError as exc:
        raise FieldError(f"s_number: {exc}") from exc
    if raw["nhs_number"]:
        try:
            values["nhs_number"] = clean_nhs_number(raw["nhs_number"])
        except FieldError as exc:
            raise FieldError(f"nhs_number: {exc}") from exc
    else:
        values["nhs_number"] = None
    for name in ("family_name", "given_name", "dob"):
        if not raw[name]:
            raise FieldError(f"{name} is empty")
    dob = _parse_date(raw["dob"])
    if dob > today:
        raise FieldError("dob is in the future")
    values["dob"] = dob
    values["postcode"] = raw["postcode"].upper()
    return values


def import_rows(lines: Iterable[str], today: date) -> ImportReport:
    """Load CSV rows: good rows are saved, each bad row reported by line number.

    Idempotent: a row whose S number is already registered updates that patient.
    """
    report = ImportReport()
    reader = csv.DictReader(lines)
    missing = [c for c in ("s_number", "family_name", "given_name", "dob") if c not in (reader.fieldnames or [])]
    if missing:
        report.errors.append((1, "header is missing column(s): " + ", ".join(missing)))
        return report
    seen_s: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if None in row:
            report.errors.append((line, "row has more fields than the header"))
            continue
        try:
            values = _clean_row(row, today)
        except FieldError as exc:
            report.errors.append((line, str(exc)))
            continue
        s_number = str(values["s_number"])
        if s_number in seen_s:
            report.errors.append((line, f"s_number {s_number} repeats line {seen_s[s_number]}"))
            continue
        seen_s[s_number] = line
        nhs_number = values["nhs_number"]
        existing = db.session.scalar(sa.select(Patient).where(Patient.s_number == s_number))
        if nhs_number:
            clash = db.session.scalar(
                sa.select(Patient.s_number).where(
                    Patient.nhs_number == nhs_number, Patient.s_number != s_number
                )
            )
            if clash:
                report.errors.append((line, f"nhs_number already belongs to {clash}"))
                continue
        # A savepoint per row: a row the database refuses leaves the others standing.
        with db.session.begin_nested():
            if existing is None:
                db.session.add(Patient(**values))
                report.added += 1
            else:
                for key, value in values.items():
                    setattr(existing, key, value)
                report.updated += 1
    return report
