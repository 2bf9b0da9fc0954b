"""`flask --app wsgi demo seed`: demo users of every role, institutions, PAS patients,
and the two demo DICOM nodes that `scripts/demo_nodes.py` serves on loopback.

Idempotent: running it again changes nothing that is already there (the demo nodes are
set back to their demo address if someone edited them).
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from datetime import date

import click
import sqlalchemy as sa
from flask import current_app
from flask.cli import AppGroup
from stdnum.gb import nhs

from app.auth.models import Role, User
from app.extensions import db
from app.patients.models import Patient
from app.requests.models import Institution

demo_cli = AppGroup("demo", help="Demonstration data for a fresh desk.")

DEMO_PASSWORD_SUFFIX = "-demo-2026"  # noqa: S105 - demo accounts' documented password, not a secret
DEMO_USERS = [
    ("requester@demo.uhl", "Dr Priya Shah", Role.REQUESTER, "Respiratory Medicine", "0116 258 4000"),
    ("analyst@demo.uhl", "Sam Okafor", Role.ANALYST, "MBP Service Desk", "x18000"),
    ("amrad@demo.uhl", "Jo Whitfield", Role.AM_RADIOLOGY, "Applications Management – Radiology", "0116 258 5555"),
    ("radiologist@demo.uhl", "Dr Tom Reyes", Role.RADIOLOGIST, "Imaging (on call)", "0116 258 6666"),
    ("admin@demo.uhl", "Alex Morgan", Role.ADMIN, "Imaging IT", "0116 258 7777"),
]

INSTITUTIONS = [
    ("Nottingham University Hospitals NHS Trust", "radiology.iep@nuh.demo.nhs.uk"),
    ("University Hospitals of Derby and Burton NHS Foundation Trust", "iep@uhdb.demo.nhs.uk"),
    ("Kettering General Hospital NHS Foundation Trust", "imaging@kgh.demo.nhs.uk"),
    ("Northampton General Hospital NHS Trust", "pacs@ngh.demo.nhs.uk"),
    ("United Lincolnshire Hospitals NHS Trust", "iep@ulh.demo.nhs.uk"),
    ("Spire Leicester Hospital", "imaging@spire-leicester.demo.co.uk"),
]


@dataclass(frozen=True)
class DemoNode:
    """A demo DICOM node: registered by `demo seed`, served by `scripts/demo_nodes.py`."""

    name: str
    ae_title: str
    port: int
    role: str
    institution: str = ""
    supports_get: bool = True
    host: str = "127.0.0.1"


def demo_nodes() -> list[DemoNode]:
    """The local PACS (answers C-GET) and a remote hospital (C-MOVE to our gateway only,
    as most hospitals' PACS are set up). Ports: DEMO_PACS_PORT / DEMO_REMOTE_PORT, else
    11113 / 11114 (the gateway itself is GATEWAY_PORT, 11112)."""
    return [
        DemoNode("UHLPACSWFM01", "UHLPACSWFM01", int(os.environ.get("DEMO_PACS_PORT") or 11113), "local_pacs"),
        DemoNode("NUH Radiology PACS", "NUHPACS", int(os.environ.get("DEMO_REMOTE_PORT") or 11114), "remote",
                 institution="Nottingham University Hospitals NHS Trust", supports_get=False),
    ]


def remote_patient_id(s_number: str) -> str:
    """The id the demo remote hospital files a demo patient under (never our S number)."""
    return f"NUH{700000 + int(s_number[1:]) % 100000:06d}"


def _nhs_number(stem: str) -> str:
    """A valid NHS number in the 999 range that the NHS keeps for testing."""
    for last in range(10):
        candidate = stem + str(last)
        if nhs.is_valid(candidate):
            return candidate
    raise ValueError(stem)


def demo_patients() -> list[dict[str, object]]:
    """The demo PAS patients, as `Patient` column values."""
    return _demo_patients()


def _demo_patients() -> list[dict[str, object]]:
    rows = [
        ("S1000001", "999000001", "SMITH", "Margaret", date(1948, 3, 14), "Female",
         "12 Welford Road", "Leicester", "LE2 7AA"),
        ("S1000002", "999000002", "PATEL", "Ravi", date(1975, 11, 2), "Male",
         "4 Narborough Road", "Leicester", "LE3 0BQ"),
        ("S1000003", "999000003", "O'BRIEN", "Siobhan", date(1990, 6, 30), "Female",
         "88 London Road", "Leicester", "LE2 0QS"),
        ("S1000004", "999000004", "NOWAK", "Piotr", date(1962, 1, 9), "Male",
         "2 Loughborough Road", "Leicester", "LE4 5LE"),
        ("S1000005", "999000005", "JONES", "Ellie", date(2012, 9, 21), "Female",
         "17 Hinckley Road", "Leicester", "LE3 0TE"),
        # Names in other scripts, as the register holds them (issue 13.11-12): the PDFs
        # must print their letters, not boxes.
        ("S1000006", "999000006", "山田", "花子", date(1983, 4, 5), "Female",
         "21 Granby Street", "Leicester", "LE1 6EJ"),
        ("S1000007", "999000007", "ΠΑΠΑΔΟΠΟΥΛΟΣ", "Γιώργος", date(1957, 10, 28), "Male",
         "9 Aylestone Road", "Leicester", "LE2 7LF"),
    ]
    patients = []
    for s_number, stem, family, given, dob, gender, street, town, postcode in rows:
        patients.append(
            dict(
                s_number=s_number,
                nhs_number=_nhs_number(stem),
                family_name=family,
                given_name=given,
                dob=dob,
                gender=gender,
                address_line1=street,
                town=town,
                county="Leicestershire",
                postcode=postcode,
            )
        )
    return patients


def _width(text: str) -> int:
    """Columns `text` takes in a terminal: East Asian wide letters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _cell(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def patient_table(patients: list[dict[str, object]]) -> list[str]:
    """The demo patients as an aligned table: S number, name, date of birth, NHS number."""
    header = ("S number", "Name", "Date of birth", "NHS number")
    rows = [header] + [
        (str(p["s_number"]), f"{str(p['family_name']).upper()}, {p['given_name']}",
         p["dob"].strftime("%d/%m/%Y") if isinstance(p["dob"], date) else str(p["dob"]),
         nhs.format(str(p["nhs_number"])))
        for p in patients
    ]
    widths = [max(_width(row[i]) for row in rows) for i in range(len(header))]
    return ["  " + "  ".join(_cell(text, width) for text, width in zip(row, widths, strict=True)).rstrip()
            for row in rows]


def demo_password(email: str) -> str:
    return email.split("@")[0] + DEMO_PASSWORD_SUFFIX


def _seed_nodes() -> list[str]:
    # Imported here: the nodes CLI module brings in the whole DICOM stack.
    from app.transfers.nodes import upsert_node

    lines = []
    for node in demo_nodes():
        upsert_node(node.name, node.ae_title, node.host, node.port, node.role, node.institution,
                    supports_get=node.supports_get)
        how = "C-GET" if node.supports_get else "C-MOVE to the gateway"
        lines.append(f"  {node.name:<20} {node.ae_title}@{node.host}:{node.port} ({node.role}, {how})")
    return lines


@demo_cli.command("seed")
def seed() -> None:
    """Add demo users, institutions, PAS patients and DICOM nodes; print the demo logins."""
    # issue 11.10: the demo accounts' passwords are published (README); never on a live desk.
    if current_app.config["IEP_SETTINGS"].production:
        raise click.ClickException(
            "demo seed refuses to run with IEP_ENV=production: its accounts have published passwords. "
            "Create users with `flask --app wsgi users create`."
        )
    for email, name, role, department, phone in DEMO_USERS:
        if db.session.scalar(sa.select(User).where(User.email == email)) is None:
            user = User(email=email, name=name, role=role, department=department, phone=phone)
            user.set_password(demo_password(email))
            db.session.add(user)
    for name, email in INSTITUTIONS:
        if db.session.scalar(sa.select(Institution).where(Institution.name == name)) is None:
            db.session.add(Institution(name=name, email=email))
    for values in _demo_patients():
        if db.session.scalar(sa.select(Patient).where(Patient.s_number == values["s_number"])) is None:
            db.session.add(Patient(**values))
    db.session.flush()
    node_lines = _seed_nodes()
    db.session.commit()
    click.echo("Demo logins (development only):")
    for email, _name, role, _dept, _phone in DEMO_USERS:
        click.echo(f"  {role.value:<13} {email:<24} password: {demo_password(email)}")
    click.echo("Demo PAS patients (type the S number into a request form):")
    for line in patient_table(_demo_patients()):
        click.echo(line)
    click.echo("Demo DICOM nodes (served by scripts/demo_nodes.py):")
    for line in node_lines:
        click.echo(line)
