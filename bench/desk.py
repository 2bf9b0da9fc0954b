"""The desk queue under 100,000 requests, on SQLite and PostgreSQL, timed through the app.

Run on demand, not by the test suite (see bench/README.md):

    .venv/bin/python bench/desk.py [--rows 100000] [--runs 30] [--skip-postgres]
                                   [--postgres-url URL] [--seed N] [--exam-lines]

For each database: a scratch database (SQLite: a file in a temporary folder; PostgreSQL:
a database created on --postgres-url and dropped afterwards) is migrated with
`flask_migrate.upgrade`, filled with bulk Core inserts, and then an analyst signed in
through the Flask test client fetches the queue. Every case runs --runs times after a
warm-up; the report gives median and p95 in ms and the ratio to a named baseline
measured in the same process: GET /requests, the analyst's own (empty) "My requests"
page - sign-in check, one small query, the base template. Then the plan of each query
the queue runs (EXPLAIN QUERY PLAN on SQLite, EXPLAIN ANALYZE on PostgreSQL).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `app` is the repository's

import sqlalchemy as sa  # noqa: E402
from flask import Flask  # noqa: E402
from flask.testing import FlaskClient  # noqa: E402
from werkzeug.security import generate_password_hash  # noqa: E402

from app import create_app  # noqa: E402
from app.auth.models import Role, User  # noqa: E402
from app.config import Settings  # noqa: E402
from app.desk.queries import encode_cursor  # noqa: E402
from app.embedded_redis import ensure_embedded_redis  # noqa: E402
from app.extensions import db  # noqa: E402
from app.patients.models import Patient  # noqa: E402
from app.requests.models import CallRefCounter, ExamLine, Institution, Request  # noqa: E402
from app.requests.statuses import Kind, Priority, Status  # noqa: E402
from app.transfers.models import Direction, Transfer, TransferState  # noqa: E402
from app.workflow.models import Message, MessageKind  # noqa: E402

PASSWORD = "correct-horse-9"  # noqa: S105 - the throwaway bench users' password
BATCH = 5_000
WARMUP = 3
SLOW_MS = 150.0
DEEP_PAGES = 100
BASELINE = "GET /requests"
S = Status

# --- The data ----------------------------------------------------------------------------

FAMILY = (  # noqa: SIM905 - a word list reads better as one string
    "Smith Jones Taylor Brown Williams Wilson Johnson Davies Patel Robinson Wright Thompson "
    "Evans Walker White Roberts Green Hall Wood Jackson Clarke Khan Hughes Edwards Hill Moore "
    "Clark Harrison Scott Young Morris Hall Ward Turner Carter Phillips Mitchell Mistry Lewis "
    "Lee King Baker Harris Cooper Parker Shah Bell Ahmed Begum Kaur Singh Chauhan Smithson "
    "Smithers Murphy O'Brien Kelly Price Bennett Cox Richardson Gray Rose Ali Hussain Mahmood "
    "Lal Parmar Chudasama Nowak Kowalski Okafor Adeyemi Mensah Nguyen Chen Wang Hopkins"
).split()
GIVEN = (  # noqa: SIM905 - a word list reads better as one string
    "Margaret Ravi Siobhan John Mary David Susan Peter Anita Mohammed Fatima Joan Brian "
    "Priya Arjun Emily Oliver Grace Harry Jack Amelia Sophie Thomas Helen Kevin Aisha "
    "Tomasz Chidi Linh Wei Gurpreet Harjit Dennis Pauline"
).split()
TOWNS = ["Leicester", "Loughborough", "Hinckley", "Melton Mowbray", "Market Harborough", "Oakham", "Coalville"]
INSTITUTIONS = [
    "Nottingham University Hospitals NHS Trust", "University Hospitals of Derby and Burton NHS FT",
    "Kettering General Hospital NHS FT", "Northampton General Hospital NHS Trust",
    "University Hospitals Coventry and Warwickshire NHS Trust", "Sherwood Forest Hospitals NHS FT",
    "United Lincolnshire Hospitals NHS Trust", "Peterborough City Hospital", "Addenbrooke's Hospital",
    "Sheffield Teaching Hospitals NHS FT", "Birmingham Heartlands Hospital", "Queen Elizabeth Hospital Birmingham",
    "Spire Leicester Hospital", "Nuffield Health Leicester Hospital", "BMI The Park Hospital",
    "Royal Papworth Hospital", "Oxford University Hospitals NHS FT", "Guy's and St Thomas' NHS FT",
    "Leeds Teaching Hospitals NHS Trust", "Manchester University NHS FT", "Royal Stoke University Hospital",
    "Walsall Manor Hospital", "George Eliot Hospital NHS Trust", "Chesterfield Royal Hospital",
    "Bedford Hospital", "Milton Keynes University Hospital", "Lister Hospital Stevenage",
    "Royal Derby Hospital", "Grantham and District Hospital", "Pilgrim Hospital Boston",
]
OLD_STATUSES = {  # older than three weeks: nearly everything closed
    S.COMPLETED: 76, S.DELIVERED: 6, S.CANCELLED: 8, S.PURGED: 6, S.DECLINED: 1.5,
    S.FAILED: 0.5, S.AWAITING_DETAILS: 1, S.ACCEPTED: 0.5, S.NEW: 0.5,
}
RECENT_STATUSES = {  # the last three weeks: the working queue
    S.NEW: 22, S.AWAITING_DETAILS: 8, S.ACCEPTED: 12, S.DOWNLOAD_REQUEST: 4, S.DOWNLOADING: 3,
    S.UPLOADING: 3, S.ON_IEP: 5, S.FAILED: 3, S.DELIVERED: 12, S.COMPLETED: 21, S.CANCELLED: 4,
    S.DECLINED: 3,
}
CLOSED = (S.DELIVERED, S.COMPLETED, S.CANCELLED, S.DECLINED, S.PURGED)
KINDS = {Kind.IMPORT: 50, Kind.EXPORT: 20, Kind.CD: 25, Kind.TRAUMA: 5}


def _pick(rng: random.Random, weights: dict) -> object:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _batches(rows: list[dict], size: int = BATCH) -> Iterator[list[dict]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


@dataclass
class Filled:
    analyst_email: str
    family_prefix: str
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)


def fill(engine: sa.Engine, rows: int, rng: random.Random, exam_lines: bool) -> Filled:
    """Users, institutions, a PAS of 400 patients and `rows` requests, by Core bulk inserts."""
    started = time.perf_counter()
    now = datetime.now(UTC).replace(microsecond=0)
    password_hash = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
    users = [("analyst", Role.ANALYST, 8), ("amrad", Role.AM_RADIOLOGY, 2), ("requester", Role.REQUESTER, 300)]
    user_rows = [
        {"email": f"{prefix}{n}@bench.uhl", "name": f"{rng.choice(GIVEN)} {rng.choice(FAMILY)}", "role": role,
         "password_hash": password_hash, "phone": f"x1{n:04d}", "department": "Radiology", "active": True,
         "session_token": uuid.uuid4().hex, "created_at": now - timedelta(days=800)}
        for prefix, role, count in users for n in range(count)
    ]
    patient_rows = []
    for n in range(400):
        patient_rows.append({
            "s_number": f"S{1_000_000 + n * 17:07d}", "nhs_number": f"999{n:07d}",
            "family_name": rng.choice(FAMILY).upper(), "given_name": rng.choice(GIVEN),
            "dob": date(1930, 1, 1) + timedelta(days=rng.randrange(32_000)),
            "gender": rng.choice(["Female", "Male"]), "address_line1": f"{rng.randrange(1, 200)} London Road",
            "address_line2": "", "town": rng.choice(TOWNS), "county": "Leicestershire",
            "postcode": f"LE{rng.randrange(1, 19)} {rng.randrange(1, 9)}AA", "updated_at": now,
        })
    with engine.begin() as conn:
        conn.execute(User.__table__.insert(), user_rows)
        conn.execute(Institution.__table__.insert(), [{"name": name, "email": ""} for name in INSTITUTIONS])
        conn.execute(Patient.__table__.insert(), patient_rows)
        by_role = {
            role: list(conn.scalars(sa.select(User.id).where(User.role == role).order_by(User.id)))
            for role in (Role.ANALYST, Role.AM_RADIOLOGY, Role.REQUESTER)
        }
        institutions = list(conn.execute(sa.select(Institution.id, Institution.name).order_by(Institution.id)))
        patients = list(conn.execute(sa.select(Patient).order_by(Patient.id)).mappings())

    desk = by_role[Role.ANALYST] + by_role[Role.AM_RADIOLOGY]
    requesters = by_role[Role.REQUESTER]
    # A few wards send most requests, a few patients come back often: skewed choices.
    requester_weights = [1 / (i + 1) ** 0.7 for i in range(len(requesters))]
    patient_weights = [1 / (i + 1) ** 0.5 for i in range(len(patients))]
    institution_weights = [1 / (i + 1) ** 0.9 for i in range(len(institutions))]
    two_years = 730 * 86_400
    moments = sorted(now - timedelta(seconds=rng.randrange(two_years)) for _ in range(rows))
    chosen_requesters = rng.choices(requesters, weights=requester_weights, k=rows)
    chosen_patients = rng.choices(patients, weights=patient_weights, k=rows)
    chosen_institutions = rng.choices(institutions, weights=institution_weights, k=rows)

    request_rows: list[dict] = []
    message_rows: list[dict] = []
    exam_rows: list[dict] = []
    transfer_rows: list[dict] = []
    counters: dict[int, int] = {}
    for index, created in enumerate(moments):
        row_id = index + 1
        age = now - created
        kind = _pick(rng, KINDS)
        if kind == Kind.TRAUMA:
            priority = Priority.BLUE_LIGHT if rng.random() < 0.8 else Priority.STANDARD
        else:
            priority = _pick(rng, {Priority.STANDARD: 87, Priority.BATCH: 10, Priority.BLUE_LIGHT: 3})
        status = _pick(rng, RECENT_STATUSES if age < timedelta(days=21) else OLD_STATUSES)
        if priority == Priority.BLUE_LIGHT and age > timedelta(days=2) and status not in CLOSED:
            status = rng.choice([S.DELIVERED, S.COMPLETED, S.COMPLETED, S.CANCELLED])  # 4-hour target: none linger
        changed = created + min(age, timedelta(minutes=rng.randrange(5, 14 * 24 * 60)))
        if status == S.NEW:
            changed = created
        assigned = None if status == S.NEW and rng.random() < 0.9 else rng.choice(desk)
        counters[created.year] = counters.get(created.year, 0) + 1
        patient = chosen_patients[index]
        institution_id, institution_name = chosen_institutions[index]
        requester = chosen_requesters[index]
        request_rows.append({
            "id": row_id, "call_ref": f"IEP-{created.year}-{counters[created.year]:06d}", "kind": kind,
            "status": status, "priority": priority,
            "priority_reason": "Theatre list" if priority == Priority.BLUE_LIGHT else "",
            "requester_id": requester, "created_at": created, "updated_at": changed, "submission_key": None,
            "version": 1 if status == S.NEW else rng.randrange(2, 6), "patient_id": patient["id"],
            "s_number": patient["s_number"], "nhs_number": patient["nhs_number"] or "",
            "family_name": patient["family_name"].title(), "given_name": patient["given_name"],
            "dob": patient["dob"], "gender": patient["gender"], "address_line1": patient["address_line1"],
            "address_line2": "", "town": patient["town"], "county": patient["county"],
            "postcode": patient["postcode"], "contact_name": "Dr A Clinician", "contact_phone": "x14000",
            "contact_email": "", "comments": "", "required_by": (created + timedelta(days=14)).date(),
            "institution_id": institution_id, "institution_name": institution_name,
            "requesting_clinician": "Dr A Clinician", "consultant": "Dr B Consultant", "department": "Respiratory",
            "site_contact_name": "", "site_contact_position": "", "site_contact_phone": "", "site_contact_email": "",
            "cd_count": rng.randrange(1, 4) if kind == Kind.CD else None, "internal_post_address": "",
            "drop_off_site": "LRI" if kind == Kind.CD else "", "assigned_to_id": assigned,
            "status_changed_at": changed, "decline_reason": "not_found" if status == S.DECLINED else "",
            "status_note": "",
            "duplicate_of_id": row_id - rng.randrange(1, 500) if row_id > 500 and rng.random() < 0.01 else None,
            "mbp_call_ref": "", "imaging_uploaded_by": "", "images_fixed_up_by": "", "date_imaging_sent": None,
        })
        # Conversations: some requests have messages; half the requests in Awaiting
        # Details have the requester's reply (they belong in Action Required).
        if status == S.AWAITING_DETAILS or rng.random() < 0.08:
            message_rows.append({"request_id": row_id, "author_id": rng.choice(desk), "kind": MessageKind.MESSAGE.value,
                                 "body": "Please confirm the study date.", "created_at": changed})
            if status != S.AWAITING_DETAILS or rng.random() < 0.5:
                message_rows.append({"request_id": row_id, "author_id": requester, "kind": MessageKind.MESSAGE.value,
                                     "body": "It was in March.", "created_at": changed + timedelta(hours=3)})
        transfer_rows.extend(_transfers(rng, row_id, kind, status, priority, created, changed))
        if exam_lines:
            for position in range(rng.choice([1, 1, 1, 2, 3])):
                exam_rows.append({"request_id": row_id, "position": position,
                                  "exam_date": (created - timedelta(days=rng.randrange(1, 60))).date(),
                                  "description": "CT chest abdomen pelvis", "exam_code": "CCAPC"})

    with engine.begin() as conn:
        for chunk in _batches(request_rows):
            conn.execute(Request.__table__.insert(), chunk)
        for chunk in _batches(message_rows):
            conn.execute(Message.__table__.insert(), chunk)
        for chunk in _batches(transfer_rows):
            conn.execute(Transfer.__table__.insert(), chunk)
        for chunk in _batches(exam_rows):
            conn.execute(ExamLine.__table__.insert(), chunk)
        conn.execute(CallRefCounter.__table__.insert(), [{"year": y, "last": n} for y, n in counters.items()])
        if conn.dialect.name == "postgresql":
            # Explicit ids bypassed the sequence: move it on, as a real history would have.
            conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('requests', 'id'), :last)"), {"last": rows})
    if engine.dialect.name == "postgresql":
        # Autovacuum would analyse a table this size within a minute; do it now so
        # that the plans are the ones a running desk gets, not cold-start guesses.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    counts = {
        "requests": len(request_rows), "messages": len(message_rows), "transfers": len(transfer_rows),
        "exam lines": len(exam_rows),
        "patients": len(patient_rows), "users": len(user_rows),
        "Blue Light active": sum(
            1 for r in request_rows if r["priority"] == Priority.BLUE_LIGHT and r["status"] not in CLOSED
        ),
        "New": sum(1 for r in request_rows if r["status"] == S.NEW),
    }
    # A prefix that matches a few of the PAS's family names, as an analyst types it.
    return Filled(analyst_email="analyst0@bench.uhl", family_prefix="smi",
                  seconds=time.perf_counter() - started, counts=counts)


# What moved images, by the request's status: its latest transfer's state.
TRANSFER_STATE = {
    S.DOWNLOAD_REQUEST: TransferState.QUEUED, S.DOWNLOADING: TransferState.RUNNING, S.UPLOADING: TransferState.RUNNING,
    S.ON_IEP: TransferState.VERIFYING, S.DELIVERED: TransferState.DELIVERED, S.COMPLETED: TransferState.DELIVERED,
    S.PURGED: TransferState.DELIVERED, S.FAILED: TransferState.FAILED,
}


def _transfers(rng: random.Random, request_id: int, kind: Kind, status: Status, priority: Priority,
               created: datetime, changed: datetime) -> list[dict]:
    """The transfers of a request that moved images (not CDs: their images were uploaded):
    one whose state follows the request's, after an earlier failed attempt for one in ten;
    a few of those under way stalled, waiting for a confirmation, or retrying an error."""
    state = TRANSFER_STATE.get(status)
    if state is None or kind == Kind.CD:
        return []
    direction = Direction.INBOUND if kind == Kind.IMPORT else Direction.OUTBOUND
    total = rng.randrange(50, 2_000)
    rows = []
    if rng.random() < 0.1:
        rows.append({"request_id": request_id, "direction": direction, "priority": priority,
                     "state": TransferState.FAILED, "instances_total": total, "instances_done": total // 3,
                     "attempts": 5, "last_error": "association rejected", "stalled": False,
                     "study_key": f"{request_id:040d}",
                     "created_at": created, "progressed_at": created, "finished_at": created})
    unfinished = state in (TransferState.QUEUED, TransferState.RUNNING, TransferState.VERIFYING)
    roll = rng.random()
    if unfinished and roll < 0.05:
        state = TransferState.WAITING_CONFIRMATION
    done = total if state == TransferState.DELIVERED else rng.randrange(total)
    rows.append({"request_id": request_id, "direction": direction, "priority": priority, "state": state,
                 "instances_total": total, "instances_done": done, "attempts": 1 + (roll < 0.15),
                 "last_error": "timed out" if unfinished and roll < 0.15 else "",
                 "stalled": unfinished and 0.05 <= roll < 0.1, "study_key": f"{request_id:040d}",
                 "created_at": changed, "progressed_at": changed,
                 "finished_at": None if unfinished else changed})
    return rows


# --- Timing --------------------------------------------------------------------------------

_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
_NEXT = re.compile(r'name="page_cursor" value="([^"]+)"')
_STAMP = re.compile(r'name="stamp" value="([^"]*)"')


@dataclass
class Case:
    label: str
    call: Callable[[], object]
    expect: int = 200
    setup: Callable[[], object] | None = None  # run before the case's warm-up, untimed


@dataclass
class Result:
    label: str
    times_ms: list[float]
    queries: int

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p95(self) -> float:
        ordered = sorted(self.times_ms)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]  # nearest rank


@contextmanager
def counting(engine: sa.Engine) -> Iterator[list[tuple[str, object]]]:
    """Every statement the engine runs inside the block, with its parameters."""
    seen: list[tuple[str, object]] = []

    def before(_conn, _cursor, statement, parameters, _context, _many) -> None:  # noqa: ANN001
        seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)


def measure(case: Case, runs: int, engine: sa.Engine) -> Result:
    if case.setup is not None:
        case.setup()
    for _ in range(WARMUP):
        case.call()
    with counting(engine) as seen:
        response = case.call()
    status = response.status_code  # type: ignore[attr-defined]
    if status != case.expect:
        raise SystemExit(f"{case.label}: expected {case.expect}, got {status}")
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        case.call()
        times.append((time.perf_counter() - started) * 1000)
    return Result(case.label, times, len(seen))


def sign_in(client: FlaskClient, email: str) -> str:
    """Sign in through the login page; return the CSRF token for HTMX posts."""
    token = _CSRF.search(client.get("/login").get_data(as_text=True)).group(1)
    response = client.post("/login", data={"csrf_token": token, "email": email, "password": PASSWORD})
    if response.status_code != 302:
        raise SystemExit(f"sign-in failed: {response.status_code}")
    return _CSRF.search(client.get("/desk").get_data(as_text=True)).group(1)


def cases(app: Flask, client: FlaskClient, token: str, filled: Filled) -> tuple[list[Case], dict[str, dict]]:
    """The requests to time, and the form data of the table cases (for the plans)."""
    hx = {"HX-Request": "true", "X-CSRFToken": token}

    def table(data: dict) -> Callable[[], object]:
        return lambda: client.post("/desk", data=data, headers=hx)

    forms = {
        "first page, Action Required": {},
        "first page, All": {"tab_choice": "all"},
        "first page, All, sorted by patient A-Z": {"tab_choice": "all", "sort_choice": "patient"},
        "filtered: status Completed + kind export": {"tab_choice": "all", "status": "Completed", "kind": "export"},
        "filtered: status Accepted + kind import": {"tab_choice": "all", "status": "Accepted", "kind": "import"},
        f"filtered: patient name '{filled.family_prefix}'": {"tab_choice": "all", "patient_name": filled.family_prefix},
    }
    # (c) deep pages: follow "Next page" as an analyst would, then time that page ...
    for sort, direction in (("created", "desc"), ("patient", "asc")):
        data = {"tab": "all", "sort": sort, "direction": direction}
        html = client.post("/desk", data=data, headers=hx).get_data(as_text=True)
        pages, cursor, last = 1, _NEXT.search(html), ""
        while cursor and pages <= DEEP_PAGES:  # a small --rows runs out of pages sooner
            last = cursor.group(1)
            html = client.post("/desk", data={**data, "page_cursor": last}, headers=hx).get_data(as_text=True)
            pages, cursor = pages + 1, _NEXT.search(html)
        if last:
            label = f"deep page {pages} (Next x{pages - 1}), sorted by {sort} {direction}"
            forms[label] = {**data, "page_cursor": last}
    # ... and a cursor made for a row 90% of the way down the whole table.
    with app.app_context():
        total = db.session.scalar(sa.select(sa.func.count(Request.id)))
        created, row_id = db.session.execute(
            sa.select(Request.created_at, Request.id).order_by(Request.created_at.desc(), Request.id.desc())
            .offset(int(total * 0.9)).limit(1)
        ).one()
    forms[f"deep page at row {int(total * 0.9):,} (made cursor), sorted by created desc"] = {
        "tab": "all", "sort": "created", "direction": "desc", "page_cursor": encode_cursor(created, row_id)}

    stamp = [""]

    def take_stamp() -> None:
        """The stamp as the page has it now: it also changes every minute (the Blue Light
        clocks), so it is taken just before the 204 case, not when the cases are made."""
        html = client.post("/desk/table", data={"tab": "all"}, headers=hx).get_data(as_text=True)
        stamp[0] = _STAMP.search(html).group(1)
    timed = [
        Case(BASELINE, lambda: client.get("/requests")),
        Case("GET /healthz (no session; database and Redis ping)", lambda: client.get("/healthz")),
        Case("GET /desk (full page, first page of Action Required)", lambda: client.get("/desk")),
        *[Case(f"table {label}", table(data)) for label, data in forms.items()],
        Case("poll /desk/table, nothing changed (204)",
             lambda: client.post("/desk/table", data={"tab": "all", "stamp": stamp[0]}, headers=hx), expect=204,
             setup=take_stamp),
        Case("poll /desk/table, something changed (table again)",
             lambda: client.post("/desk/table", data={"tab": "all", "stamp": "stale"}, headers=hx)),
    ]
    return timed, forms


# --- Plans ---------------------------------------------------------------------------------


# Which queries differ from case to case (printed for each case) and which are the same
# in every case (printed once).
PER_CASE = ("page rows", "tab counts")


def _kind_of(statement: str) -> str | None:
    text = " ".join(statement.split())
    if "max(requests.updated_at)" in text:
        return "queue stamp (every poll)"
    if text.startswith(("SELECT (SELECT count(", "SELECT count(CASE")) and "FROM requests" in text:
        return "tab counts"
    if text.startswith("SELECT requests.") and " LIMIT " in text:
        return "page rows"
    if text.startswith("SELECT requests.") and "ORDER BY requests.created_at ASC" in text:
        return "pinned Blue Light rows"
    if text.startswith("SELECT transfers.") and "max(transfers.id)" in text:
        return "transfer bars (the page's rows)"
    return None


def _statement_ms(conn: sa.Connection, statement: str, params: object, runs: int = 5) -> float:
    conn.exec_driver_sql(statement, params).all()  # warm
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        conn.exec_driver_sql(statement, params).all()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def explain(app: Flask, client: FlaskClient, token: str, forms: dict[str, dict]) -> None:
    """Print the plan and the time of each queue query: the page rows and the tab counts of
    every case, the others (stamp, pinned rows, badges, bars) once."""
    hx = {"HX-Request": "true", "X-CSRFToken": token}
    with app.app_context():
        engine = db.engine
    postgres = engine.dialect.name == "postgresql"
    shown: set[str] = set()
    for label, data in forms.items():
        with counting(engine) as seen:
            client.post("/desk", data=data, headers=hx)
        for statement, params in seen:
            kind = _kind_of(statement)
            if kind is None or (kind not in PER_CASE and kind in shown):
                continue
            shown.add(kind)
            heading = f"{kind} - {label}" if kind in PER_CASE else f"{kind} (first seen in: {label})"
            with engine.connect() as conn:
                took = f"{_statement_ms(conn, statement, params):.1f} ms"
                if postgres:
                    # JIT compiles a query whose estimated cost passes jit_above_cost: show its share.
                    conn.exec_driver_sql("SET jit = off")
                    took += f", with jit off {_statement_ms(conn, statement, params):.1f} ms"
                    conn.exec_driver_sql("RESET jit")
                    plan = conn.exec_driver_sql("EXPLAIN ANALYZE " + statement, params).all()
                    lines = [row[0] for row in plan]
                else:
                    plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
                    lines = [f"{'   ' * _depth(plan, row)}{row[3]}" for row in plan]
            print(f"\n  -- {heading}: median {took}")
            for line in lines:
                print("     " + line)


def _depth(plan: list, row: tuple) -> int:
    parents = {r[0]: r[1] for r in plan}
    depth, parent = 0, row[1]
    while parent in parents:
        depth, parent = depth + 1, parents[parent]
    return depth


# --- One database --------------------------------------------------------------------------


def run_one(name: str, url: str, instance: Path, redis_url: str, args: argparse.Namespace) -> list[Result]:
    from flask_migrate import upgrade

    settings = Settings(instance_path=instance, database_url=url, redis_url=redis_url,
                        secret_key="bench-" + uuid.uuid4().hex)
    app = create_app(settings)
    app.logger.disabled = True  # a line per request would time the terminal, not the desk
    try:
        with app.app_context():
            started = time.perf_counter()
            upgrade()
            migrated = time.perf_counter() - started
            filled = fill(db.engine, args.rows, random.Random(args.seed), args.exam_lines)
            engine = db.engine
        print(f"\n== {name}: migrated in {migrated:.1f} s, filled in {filled.seconds:.1f} s: "
              + ", ".join(f"{k} {v:,}" for k, v in filled.counts.items()))
        client = app.test_client()
        token = sign_in(client, filled.analyst_email)
        timed, forms = cases(app, client, token, filled)
        print(f"   {args.runs} runs per case after {WARMUP} warm-up; ratios against baseline '{BASELINE}' "
              "(the analyst's empty My requests page)")
        # As wsgi.py does once the app is built: the collector's full passes skip what
        # start-up made (here also the harness and the fill), else one of them stalls
        # whichever run it falls in by 100-150 ms. Thawed again for the next database.
        gc.collect()
        gc.freeze()
        try:
            results = [measure(case, args.runs, engine) for case in timed]
        finally:
            gc.unfreeze()
        base = results[0].median
        width = max(len(r.label) for r in results)
        for r in results:
            ratio = "" if r.label == BASELINE else f" ({r.median / base:4.1f}× baseline '{BASELINE}')"
            slow = "  <-- SLOW" if r.median > SLOW_MS else ""
            print(f"   {r.label:<{width}}  median {r.median:7.1f} ms  p95 {r.p95:7.1f} ms{ratio}"
                  f"  {r.queries} queries{slow}")
        print(f"\n   Plans ({'EXPLAIN QUERY PLAN' if engine.dialect.name == 'sqlite' else 'EXPLAIN ANALYZE'}):")
        explain(app, client, token, forms)
        return results
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def _stop(pid: int) -> None:
    """Stop the Redis this run started and wait for it, so it writes nothing after cleanup."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def add_common_arguments(parser: argparse.ArgumentParser, runs: int) -> None:
    """The arguments every desk-side bench takes (bench/desk.py, bench/reports.py)."""
    parser.add_argument("--rows", type=int, default=100_000, help="requests to insert (default 100000)")
    parser.add_argument("--runs", type=int, default=runs, help=f"timed runs per case (default {runs})")
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--skip-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument("--postgres-url", default=os.environ.get(
        "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
        help="a server where a scratch database may be created and dropped")
    parser.add_argument("--seed", type=int, default=2026, help="random seed for the data (default 2026)")


RunOne = Callable[[str, str, Path, str, argparse.Namespace], list[Result]]


def on_each_database(args: argparse.Namespace, run_one: RunOne, prefix: str) -> dict[str, list[Result]]:
    """`run_one` on a scratch SQLite file and a scratch PostgreSQL database (each unless
    skipped), beside one embedded Redis; everything made is removed at the end."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    redis_url = ensure_embedded_redis(work)
    summary: dict[str, list[Result]] = {}
    try:
        if not args.skip_sqlite:
            (work / "sqlite").mkdir()
            summary["SQLite"] = run_one(
                "SQLite", f"sqlite:///{work / 'bench.sqlite3'}", work / "sqlite", redis_url, args
            )
        if not args.skip_postgres:
            admin = sa.create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
            scratch = f"iep_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{scratch}"'))
            try:
                (work / "postgresql").mkdir()
                url = admin.url.set(database=scratch).render_as_string(hide_password=False)
                version = ""
                with admin.connect() as conn:
                    version = conn.scalar(sa.text("SHOW server_version")).split()[0]
                summary[f"PostgreSQL {version}"] = run_one(
                    f"PostgreSQL {version}", url, work / "postgresql", redis_url, args)
            finally:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
                admin.dispose()
    finally:
        pid_file = work / "redis" / "redis.pid"
        if pid_file.exists():
            _stop(int(pid_file.read_text().strip()))
        shutil.rmtree(work, ignore_errors=True)
    return summary


def print_summary(summary: dict[str, list[Result]], args: argparse.Namespace, column: int = 24) -> None:
    """Median / p95 per case and database, with the ratio to each database's first case."""
    print(f"\n== Summary: median / p95 ms ({args.rows:,} requests, {args.runs} runs)")
    names = list(summary)
    labels = [r.label for r in next(iter(summary.values()))] if summary else []
    width = max((len(label) for label in labels), default=0)
    print("   " + " " * width + "".join(f"  {n:>{column}}" for n in names))
    for i, label in enumerate(labels):
        cells = []
        for name in names:
            r, base = summary[name][i], summary[name][0].median
            cells.append(f"  {r.median:7.1f} / {r.p95:7.1f} ({r.median / base:5.1f}×)")
        print(f"   {label:<{width}}" + "".join(f"{c:>{column + 2}}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, runs=30)
    parser.add_argument("--exam-lines", action="store_true", help="also insert 1-3 exam lines per request")
    args = parser.parse_args(argv)
    print_summary(on_each_database(args, run_one, "iep-bench-"), args)
    return 0

if __name__ == "__main__":
    sys.exit(main())
