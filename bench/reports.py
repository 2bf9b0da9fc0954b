"""The compliance report under 100,000 requests, on SQLite and PostgreSQL, timed through the app.

Run on demand, not by the test suite (see bench/README.md):

    .venv/bin/python bench/reports.py [--rows 100000] [--runs 10] [--skip-postgres]
                                      [--postgres-url URL] [--seed N]

For each database: a scratch database is migrated and filled by bench/desk.py's generator
(`desk.fill`: 100,000 requests over two years, users, institutions, a PAS), then given
the history a report reads: every request's status changes as audit rows (the path its
final status implies, an Awaiting Details spell for some, the 14-day auto-cancel for a
few), a transfer for each request that got past Accepted (direction by kind; states,
attempts, partial imports, bytes, failure reasons), an analyst's Retry for some, CDs
spread over the three drop-off sites. An admin signed in through the Flask test client
then asks for the report of a month, a half-year and a year, as a page, a CSV and a PDF.
Each case runs --runs times after a warm-up; the report gives median and p95 in ms and
the ratio to a baseline measured in the same process: GET /requests, the admin's own
(empty) "My requests" page. Then each query of the month's and the year's report, timed
alone, with its plan (EXPLAIN QUERY PLAN on SQLite, EXPLAIN ANALYZE on PostgreSQL).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `app` is the repository's

import sqlalchemy as sa  # noqa: E402
from flask import Flask  # noqa: E402
from werkzeug.security import generate_password_hash  # noqa: E402

from app import audit, create_app  # noqa: E402
from app.admin.report_figures import Period, last_complete_month  # noqa: E402
from app.auth.models import Role, User  # noqa: E402
from app.config import Settings  # noqa: E402
from app.extensions import db  # noqa: E402
from app.requests.models import Request  # noqa: E402
from app.requests.statuses import Kind, Priority, Status  # noqa: E402
from app.timeutil import local_today  # noqa: E402
from app.transfers.models import Direction, Transfer, TransferState  # noqa: E402
from bench.desk import (  # noqa: E402 - after the repository is on sys.path
    BATCH,
    PASSWORD,
    SLOW_MS,
    WARMUP,
    Case,
    Result,
    _batches,
    _depth,
    _statement_ms,
    add_common_arguments,
    counting,
    fill,
    measure,
    on_each_database,
    print_summary,
)

BASELINE = "GET /requests"
ADMIN = "admin0@bench.uhl"
S = Status

# The statuses a request went through to reach its final one (after its first, New or
# Awaiting Drop-off), by kind; machine.ALLOWED permits each step.
IMPORT_PATH = {
    S.ACCEPTED: (S.ACCEPTED,), S.DOWNLOAD_REQUEST: (S.ACCEPTED, S.DOWNLOAD_REQUEST),
    S.DOWNLOADING: (S.ACCEPTED, S.DOWNLOAD_REQUEST, S.DOWNLOADING),
    S.UPLOADING: (S.ACCEPTED, S.UPLOADING), S.ON_IEP: (S.ACCEPTED, S.ON_IEP),
    S.DELIVERED: (S.ACCEPTED, S.DOWNLOAD_REQUEST, S.DOWNLOADING, S.DELIVERED),
    S.COMPLETED: (S.ACCEPTED, S.DOWNLOAD_REQUEST, S.DOWNLOADING, S.DELIVERED, S.COMPLETED),
    S.FAILED: (S.ACCEPTED, S.DOWNLOAD_REQUEST, S.FAILED), S.PURGED: (S.ACCEPTED, S.ON_IEP, S.PURGED),
    S.DECLINED: (S.DECLINED,), S.CANCELLED: (S.CANCELLED,), S.AWAITING_DETAILS: (S.AWAITING_DETAILS,),
}
EXPORT_PATH = {**IMPORT_PATH, S.DELIVERED: (S.ACCEPTED, S.UPLOADING, S.DELIVERED),
               S.COMPLETED: (S.ACCEPTED, S.UPLOADING, S.DELIVERED, S.COMPLETED)}
CD_PATH = {**IMPORT_PATH, S.DELIVERED: (S.COLLECTED, S.UPLOADED, S.DOWNLOADING, S.DELIVERED),
           S.COMPLETED: (S.COLLECTED, S.UPLOADED, S.DOWNLOADING, S.DELIVERED, S.COMPLETED)}
PATHS = {Kind.IMPORT: IMPORT_PATH, Kind.EXPORT: EXPORT_PATH, Kind.TRAUMA: EXPORT_PATH, Kind.CD: CD_PATH}
FAILURES = (
    "connection refused: nothing listens on 10.1.2.3:104 — check the node is running",
    "the node did not answer within 30 seconds — try again later (gave up after 5 attempts)",
    "association rejected: called AE title not recognised — check the node's AE title",
    "3 of 120 instances are not at the destination after sending: ... Retry resends only those.",
    "remote out of resources (0xA702): it could not send the instances; try again later",
)
IN_FLIGHT = {S.DOWNLOAD_REQUEST: TransferState.QUEUED, S.DOWNLOADING: TransferState.RUNNING,
             S.UPLOADING: TransferState.RUNNING, S.ON_IEP: TransferState.DELIVERED,
             S.DELIVERED: TransferState.DELIVERED, S.COMPLETED: TransferState.DELIVERED,
             S.FAILED: TransferState.FAILED, S.PURGED: TransferState.DELIVERED}


def add_history(engine: sa.Engine, rng: random.Random) -> dict[str, int]:
    """The audit rows, transfers, an admin and CD sites a report reads (see the docstring)."""
    with engine.begin() as conn:
        conn.execute(User.__table__.insert(), [{
            "email": ADMIN, "name": "Bench Admin", "role": Role.ADMIN,
            "password_hash": generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000"), "phone": "x10000",
            "department": "IM&T", "active": True, "session_token": uuid.uuid4().hex,
            "created_at": datetime.now(UTC) - timedelta(days=800)}])
        analyst_id, analyst = conn.execute(sa.select(User.id, User.email).where(User.role == Role.ANALYST)
                                           .order_by(User.id).limit(1)).one()
        # desk.fill leaves every CD at the LRI: spread them over the three receptions.
        conn.execute(Request.__table__.update().where(Request.kind == Kind.CD).values(
            drop_off_site=sa.case((Request.id % 3 == 1, "GH"), (Request.id % 3 == 2, "LGH"), else_="LRI")))
        requests = conn.execute(sa.select(Request.id, Request.call_ref, Request.kind, Request.priority,
                                          Request.status, Request.created_at, Request.status_changed_at)
                                .order_by(Request.id)).all()
    events: list[dict] = []
    transfers: list[dict] = []
    retries: list[tuple[int, str, datetime]] = []  # request id, call ref, when: for the transfer ids
    for row_id, call_ref, kind, priority, status, created, changed in requests:
        created, changed = _aware(created), _aware(changed)
        first = S.AWAITING_DROP_OFF if kind == Kind.CD else S.NEW
        path = list(PATHS[kind].get(status, ()))
        auto = status == S.CANCELLED and rng.random() < 0.3
        if auto:
            path = [S.AWAITING_DETAILS, S.CANCELLED]
        elif path and path[0] != S.AWAITING_DETAILS and rng.random() < 0.12:
            path = [S.AWAITING_DETAILS, *path]  # details were missing first
        if not path:
            continue
        span = max(changed - created, timedelta(minutes=len(path)))
        if auto:
            span = max(span, timedelta(days=14, minutes=5))
        previous, moments = first, sorted(created + span * rng.uniform(0.02, 1.0) for _ in path[:-1])
        moments.append(created + span)
        for step, at in zip(path, moments, strict=True):
            by_job = auto and step == S.CANCELLED
            events.append({"at": at, "user_id": None if by_job else analyst_id,
                           "actor": audit.SYSTEM_AUTO_CANCEL if by_job else analyst,
                           "action": audit.Action.STATUS_CHANGE.value, "request_id": row_id,
                           "detail": f"{call_ref} {previous.value} -> {step.value}", "remote_addr": ""})
            previous = step
        if status in IN_FLIGHT:
            started = moments[0]
            direction = (Direction.OUTBOUND if kind in (Kind.EXPORT, Kind.TRAUMA)
                         else Direction.PULL if kind == Kind.IMPORT and rng.random() < 0.3 else Direction.INBOUND)
            state = IN_FLIGHT[status]
            if state == TransferState.DELIVERED and rng.random() < 0.01:
                state = TransferState.CANCELLED
            size = rng.randrange(5_000_000, 2_000_000_000)
            done = size if state == TransferState.DELIVERED else rng.randrange(0, size)
            transfers.append(_transfer(row_id, direction, priority, state, started, size, done,
                                       attempts=rng.choice((1, 1, 1, 1, 1, 1, 1, 1, 2, 3)),
                                       partial=direction == Direction.INBOUND and state == TransferState.DELIVERED
                                       and rng.random() < 0.02,
                                       error=rng.choice(FAILURES) if state == TransferState.FAILED else ""))
            if rng.random() < 0.03:
                retries.append((row_id, call_ref, started + timedelta(minutes=rng.randrange(5, 600))))
    with engine.begin() as conn:
        for chunk in _batches(events, BATCH):
            conn.execute(audit.AuditEvent.__table__.insert(), chunk)
        for chunk in _batches(transfers, BATCH):
            conn.execute(Transfer.__table__.insert(), chunk)
        ids = dict(conn.execute(sa.select(Transfer.request_id, Transfer.id)).all())
        retry_rows = [{"at": at, "user_id": analyst_id, "actor": analyst, "action": audit.Action.TRANSFER.value,
                       "request_id": rid, "detail": f"{ref} transfer {ids[rid]} retry", "remote_addr": ""}
                      for rid, ref, at in retries]
        for chunk in _batches(retry_rows, BATCH):
            conn.execute(audit.AuditEvent.__table__.insert(), chunk)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    return {"status-change audit rows": len(events), "transfers": len(transfers), "retry audit rows": len(retry_rows)}


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _transfer(request_id: int, direction: Direction, priority: Priority, state: TransferState, created: datetime,
              size: int, done: int, *, attempts: int, partial: bool, error: str) -> dict:
    finished = state in (TransferState.DELIVERED, TransferState.FAILED, TransferState.CANCELLED)
    return {
        "request_id": request_id, "direction": direction, "priority": priority, "state": state,
        "source_node_id": None, "dest_node_id": None, "study_uids": [], "instances_total": 400,
        "instances_done": 400 if finished else 100, "instances_confirmed": 400 if state == TransferState.DELIVERED
        else 0, "bytes_total": size, "bytes_done": done, "attempts": attempts, "max_attempts": 5,
        "last_error": error, "job_id": "", "lease_token": "", "lease_until": None, "cancel_requested": False,
        "not_before": None, "created_by_id": None, "created_at": created, "started_at": created,
        "progressed_at": created, "finished_at": created + timedelta(minutes=20) if finished else None,
        "stalled": False, "mismatch_accepted": False, "partial_ok": partial, "phase": "", "moving_study_uid": "",
        "report_text": "", "report_pdf_path": "", "study_key": uuid.uuid4().hex, "dest_key": 0,
    }


# --- Timing --------------------------------------------------------------------------------


def periods(today: date) -> dict[str, Period]:
    last_half = Period("half", today.year, 1) if today.month > 6 else Period("half", today.year - 1, 2)
    return {
        "month": last_complete_month(today),
        "half-year": last_half,
        "year": Period("year", today.year - 1),
    }


def sign_in(client) -> None:  # noqa: ANN001 - Flask's test client
    from bench.desk import _CSRF

    token = _CSRF.search(client.get("/login").get_data(as_text=True)).group(1)
    response = client.post("/login", data={"csrf_token": token, "email": ADMIN, "password": PASSWORD})
    if response.status_code != 302:
        raise SystemExit(f"sign-in failed: {response.status_code}")


def cases(client, chosen: dict[str, Period]) -> list[Case]:  # noqa: ANN001
    def get(url: str, args: dict[str, str] | None = None):  # noqa: ANN202
        return lambda: client.get(url, query_string=args or {})

    month, half, year = chosen["month"], chosen["half-year"], chosen["year"]
    return [
        Case(BASELINE, get("/requests")),
        Case(f"report page, month ({month.label})", get("/admin/reports", month.query())),
        Case(f"report page, half-year ({half.label})", get("/admin/reports", half.query())),
        Case(f"report page, year ({year.label})", get("/admin/reports", year.query())),
        Case(f"CSV, year ({year.label})", get("/admin/reports.csv", year.query())),
        Case(f"PDF, month ({month.label})", get("/admin/reports.pdf", month.query())),
        Case(f"PDF, year ({year.label})", get("/admin/reports.pdf", year.query())),
    ]


def explain(app: Flask, client, period: Period) -> None:  # noqa: ANN001
    """Each query of the period's report page, timed alone, with its plan."""
    with app.app_context():
        engine = db.engine
    postgres = engine.dialect.name == "postgresql"
    with counting(engine) as seen:
        client.get("/admin/reports", query_string=period.query())
    for statement, params in seen:
        text = " ".join(statement.split())
        if "FROM users" in text and "requests" not in text and "transfers" not in text:
            continue  # the sign-in check
        with engine.connect() as conn:
            took = _statement_ms(conn, statement, params)
            if postgres:
                plan = [row[0] for row in conn.exec_driver_sql("EXPLAIN ANALYZE " + statement, params).all()]
            else:
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
                plan = [f"{'   ' * _depth(rows, row)}{row[3]}" for row in rows]
        print(f"\n  -- {took:7.1f} ms  {text[:150]}{'…' if len(text) > 150 else ''}")
        for line in plan:
            print("     " + line)


def run_one(name: str, url: str, instance: Path, redis_url: str, args: argparse.Namespace) -> list[Result]:
    from flask_migrate import upgrade

    settings = Settings(instance_path=instance, database_url=url, redis_url=redis_url,
                        secret_key="bench-" + uuid.uuid4().hex)
    app = create_app(settings)
    app.logger.disabled = True
    try:
        with app.app_context():
            upgrade()
            rng = random.Random(args.seed)
            filled = fill(db.engine, args.rows, rng, exam_lines=False)
            started = time.perf_counter()
            added = add_history(db.engine, rng)
            added_s = time.perf_counter() - started
            engine = db.engine
            today = local_today()
        print(f"\n== {name}: filled in {filled.seconds:.1f} s, history in {added_s:.1f} s: "
              + ", ".join(f"{k} {v:,}" for k, v in {**filled.counts, **added}.items()))
        client = app.test_client()
        sign_in(client)
        chosen = periods(today)
        with app.app_context():
            for label, period in chosen.items():
                start, end = period.bounds()
                n = db.session.scalar(sa.select(sa.func.count(Request.id)).where(
                    Request.created_at >= start, Request.created_at < end))
                print(f"   {label}: {period.label}, {n:,} requests submitted")
        print(f"   {args.runs} runs per case after {WARMUP} warm-up; ratios against baseline '{BASELINE}' "
              "(the admin's empty My requests page)")
        results = [measure(case, args.runs, engine) for case in cases(client, chosen)]
        base = results[0].median
        width = max(len(r.label) for r in results)
        for r in results:
            ratio = "" if r.label == BASELINE else f" ({r.median / base:6.1f}× baseline)"
            slow = "  <-- SLOW" if r.median > SLOW_MS else ""
            print(f"   {r.label:<{width}}  median {r.median:8.1f} ms  p95 {r.p95:8.1f} ms{ratio}"
                  f"  {r.queries} queries{slow}")
        how = 'EXPLAIN QUERY PLAN' if engine.dialect.name == 'sqlite' else 'EXPLAIN ANALYZE'
        for label in ("month", "year"):
            print(f"\n   The {label}'s queries ({chosen[label].label}; {how}):")
            explain(app, client, chosen[label])
        return results
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, runs=10)
    args = parser.parse_args(argv)
    print_summary(on_each_database(args, run_one, "iep-bench-reports-"), args, column=28)
    return 0

if __name__ == "__main__":
    sys.exit(main())
