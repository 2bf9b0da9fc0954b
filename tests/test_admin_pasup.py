"""The PAS register upload (issue 14.3): an admin uploads an extract, a job checks it and
the page previews what it would do, bad lines named; Apply (confirmed, this session's own
upload, the file unchanged) has a job apply exactly that; the last extract's facts shown.

Jobs run on the test run's real Redis through an in-process RQ SimpleWorker in burst mode
(STYLE "RQ"); tests/test_admin_pasup_browser.py runs them through worker.py's pool.
"""

from __future__ import annotations

import io
import re

import pytest
import sqlalchemy as sa
from rq import Queue, SimpleWorker

from app.audit import Action, AuditEvent
from app.extensions import db, redis_conn
from app.patients import extracts
from app.patients.models import PasExtract, Patient
from app.queues import MAINTENANCE
from tests.conftest import PAS_PATIENT_VALUES, csrf_token

HEADER = "s_number,nhs_number,family_name,given_name,dob,gender,address_line1,address_line2,town,county,postcode\n"
# Against the pas_patients fixture (SMITH S1234567, PATEL S7654321, O'BRIEN S0000003):
EXTRACT = (
    HEADER
    + "S1234567,999 000 0018,SMITH,Margaret,1948-03-14,Female,12 Welford Road,,Leicester,,le2 7aa\n"  # 2 unchanged
    + "S7654321,9990000026,PATEL,Ravi,02/11/1975,Male,9 New Walk,,Leicester,,LE1 6TE\n"  # 3 updated: moved house
    + "S1000001,,GREEN,Gail,1970-12-31,Female,1 Road,,Town,,LE1 1AA\n"  # 4 added
    + "S100002,,JONES,Ann,1950-01-01,,1 Road,,Town,,LE1 1AA\n"  # 5 bad S number
    + "S1000003,9990000019,BROWN,Bob,1960-02-02,,1 Road,,Town,,LE1 1AA\n"  # 6 bad check digit
    + "S1000004,,WHITE,Will,2990-01-01,,1 Road,,Town,,LE1 1AA\n"  # 7 born in the future
    + "S1000005,9990000018,BLACK,Bea,1961-01-01,,1 Road,,Town,,LE1 1AA\n"  # 8 SMITH's NHS number
    + "S1000001,,GREEN,Gail,1970-12-31,,,,,,\n"  # 9 repeats line 4
    + "S1000006,,GREY,Gus,1962-01-01,,1 Road,,Town\n"  # 10 truncated
).encode()
BAD_LINES = {
    5: ("s_number", "An S number is the letter S followed by 7 digits"),
    6: ("nhs_number", "This is not a valid NHS number"),
    7: ("dob", "dob is in the future"),
    8: ("nhs_number", "nhs_number already belongs to S1234567"),
    9: ("s_number", "s_number S1000001 repeats line 4"),
    10: ("the whole row", "row has fewer fields than the header"),
}


@pytest.fixture(autouse=True)
def empty_queue(app):
    """No job left on the run's Redis by another test reaches this test's database."""
    Queue(MAINTENANCE, connection=redis_conn()).empty()


def run_jobs() -> None:
    conn = redis_conn()
    SimpleWorker([Queue(MAINTENANCE, connection=conn)], connection=conn).work(burst=True)
    db.session.expire_all()


def upload(client, data: bytes, name: str = "pas-extract.csv"):  # noqa: ANN001, ANN201
    token = csrf_token(client, "/admin/pas")
    return client.post("/admin/pas/upload", data={"csrf_token": token, "extract": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def apply(client, token: str | None = None, confirm: bool = True):  # noqa: ANN001, ANN201
    if token is None:
        token = the_extract().token
    data = {"csrf_token": csrf_token(client, "/admin/pas"), "token": token}
    if confirm:
        data["confirm"] = "yes"
    return client.post("/admin/pas/apply", data=data)


def the_extract() -> PasExtract:
    """The latest upload of the page (not the command line's)."""
    return db.session.scalars(sa.select(PasExtract).where(PasExtract.actor != "cli")
                              .order_by(PasExtract.id.desc())).first()


def page_text(client) -> str:  # noqa: ANN001
    html = client.get("/admin/pas").get_data(as_text=True)
    return re.sub(r"\s+", " ", html)


def bad_lines_shown(html: str) -> dict[int, tuple[str, str]]:
    rows = re.findall(r"<tr><td>(\d+)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", html)
    return {int(line): (column, problem) for line, column, problem in rows}


def registered() -> dict[str, Patient]:
    db.session.expire_all()
    return {p.s_number: p for p in db.session.scalars(sa.select(Patient))}


def figures(html: str) -> dict[str, str]:
    return dict(re.findall(r'<tr><th scope="row">([^<]+)</th><td>([^<]+)</td></tr>', html))


def previewed(client, data: bytes = EXTRACT, name: str = "pas-extract.csv") -> str:  # noqa: ANN001
    answer = upload(client, data, name)
    assert answer.status_code == 303, answer.get_data(as_text=True)
    assert "Checking line" in page_text(client)  # the job has not run yet
    run_jobs()
    return page_text(client)


def test_the_preview_counts_each_kind_of_row_and_names_every_bad_line(client, login_as, pas_patients):
    login_as("admin")
    html = previewed(client)
    assert figures(html) == {
        "Rows in the file": "9", "Patients added": "1", "Patients updated": "1", "Unchanged": "1",
        "Bad lines, left out": "6",
        "Removed": "none: 1 registered patient is not in this file and stays on the register unchanged",
    }
    shown = bad_lines_shown(html)
    assert set(shown) == set(BAD_LINES)
    for line, (column, problem) in BAD_LINES.items():
        assert shown[line][0] == column and problem in shown[line][1], (line, shown[line])
    assert "Apply to the PAS register" in html and "leaving out the 6 bad lines" in html
    # A preview changes nothing.
    patients = registered()
    assert set(patients) == {"S1234567", "S7654321", "S0000003"}
    assert patients["S7654321"].address_line1 == "4 Narborough Road"


def test_apply_applies_exactly_the_previewed_rows_and_shows_the_extract(client, login_as, pas_patients):
    admin = login_as("admin")
    previewed(client)
    smith_stamp = registered()["S1234567"].updated_at
    answer = apply(client)
    assert answer.status_code == 303
    assert "Checking the file against the register once more" in page_text(client)
    run_jobs()
    patients = registered()
    assert set(patients) == {"S1234567", "S7654321", "S0000003", "S1000001"}
    assert patients["S7654321"].address_line1 == "9 New Walk" and patients["S7654321"].postcode == "LE1 6TE"
    assert patients["S1000001"].family_name == "GREEN" and patients["S1000001"].nhs_number is None
    assert patients["S1234567"].updated_at == smith_stamp  # unchanged means untouched
    extract = the_extract()
    assert (extract.state, extract.added, extract.updated, extract.unchanged, extract.rejected) == (
        PasExtract.APPLIED, 1, 1, 1, 6)
    assert extract.content is None  # the bytes are not kept once applied
    html = page_text(client)
    assert "Applied: 1 added, 1 updated, 1 unchanged, 6 bad lines left out." in html
    last = html[html.index('id="pas-last"'):html.index("</section>", html.index('id="pas-last"'))]
    assert "pas-extract.csv" in last and f"9 rows, {len(EXTRACT):,} bytes" in last and admin.email in last
    assert "1 added, 1 updated, 1 unchanged, 6 bad lines left out" in last


def test_apply_needs_the_box_ticked(client, login_as, pas_patients):
    login_as("admin")
    previewed(client)
    answer = apply(client, confirm=False)
    assert answer.status_code == 422
    assert "Tick the box to confirm" in answer.get_data(as_text=True)
    run_jobs()
    assert the_extract().state == PasExtract.PREVIEWED and "S1000001" not in registered()


def test_a_stale_preview_is_not_applied(client, login_as, pas_patients):
    login_as("admin")
    previewed(client)
    first = the_extract().token
    assert apply(client).status_code == 303
    again = apply(client, first)
    assert again.status_code == 409 and "it is being applied" in again.get_data(as_text=True)
    run_jobs()
    again = apply(client, first)
    assert again.status_code == 409 and "it has already been applied" in again.get_data(as_text=True)
    # An upload replaced by a newer one of the same session cannot be applied either.
    previewed(client, EXTRACT.replace(b"9 New Walk", b"10 New Walk"))
    older = the_extract().token
    previewed(client, EXTRACT.replace(b"9 New Walk", b"11 New Walk"))
    refused = apply(client, older)
    assert refused.status_code == 409
    run_jobs()
    assert registered()["S7654321"].address_line1 == "9 New Walk"
    details = db.session.scalars(sa.select(AuditEvent.detail).where(AuditEvent.action == Action.PAS_REFUSED)).all()
    assert len(details) == 3 and all(d.endswith("stale") or "not this session" in d for d in details)


def test_another_admins_preview_is_not_applied(app, client, login_as, make_user, pas_patients):
    login_as("admin")
    previewed(client)
    token = the_extract().token
    other = app.test_client()
    someone = make_user("admin")
    signed_in = other.post("/login", data={"csrf_token": csrf_token(other), "email": someone.email,
                                           "password": "correct-horse-9"})
    assert signed_in.status_code == 302
    refused = apply(other, token)
    assert refused.status_code == 409
    assert "not one you uploaded in this session" in refused.get_data(as_text=True)
    run_jobs()
    assert the_extract().state == PasExtract.PREVIEWED and "S1000001" not in registered()
    # Nor in another session of the same admin: the token is bound to the session.
    event = db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action == Action.PAS_REFUSED)).one()
    assert event.user_id == someone.id and event.detail == "not this session's"


def test_a_kept_file_that_changed_is_not_applied(client, login_as, pas_patients):
    login_as("admin")
    previewed(client)
    extract = the_extract()
    extract.content = extract.content.replace(b"GREEN", b"GREER")
    db.session.commit()
    refused = apply(client)
    assert refused.status_code == 409 and "has changed since it was checked" in refused.get_data(as_text=True)
    run_jobs()
    assert "S1000001" not in registered()


def test_a_register_changed_since_the_preview_shows_the_new_preview_instead(client, runner, tmp_path, login_as,
                                                                              pas_patients):
    login_as("admin")
    previewed(client)
    other = tmp_path / "other.csv"
    other.write_bytes((HEADER + "S1000001,,GREEN,Gail,1970-12-31,Female,1 Road,,Town,,LE1 1AA\n").encode())
    assert runner.invoke(args=["pas", "import", str(other)]).exit_code == 0
    assert apply(client).status_code == 303
    run_jobs()
    extract = the_extract()
    assert extract.state == PasExtract.PREVIEWED and extract.message == extracts.REGISTER_CHANGED
    html = page_text(client)
    assert figures(html)["Patients added"] == "0" and figures(html)["Unchanged"] == "2"
    assert registered()["S7654321"].address_line1 == "4 Narborough Road"  # nothing written
    assert apply(client).status_code == 303
    run_jobs()
    assert registered()["S7654321"].address_line1 == "9 New Walk"


@pytest.mark.parametrize(("data", "name", "message"), [
    pytest.param((b"s_number,name\nS1000001,Smith\n"), "pas.csv",
                 "The header is wrong: missing column(s): nhs_number, family_name", id="wrong_columns"),
    pytest.param(HEADER.replace(",postcode", ",postcode,ward").encode() + b"S1000001,,A,B,1970-01-01,,,,,,,W1\n",
                 "pas.csv", "column(s) the extract does not have: ward", id="an_extra_column"),
    pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "photo.png", "is not UTF-8 text",
                 id="not_text"),
    pytest.param(HEADER.encode() + b'S1000001,"unclosed,quote\n', "pas.csv", "is not a CSV file the desk can read",
                 id="not_csv"),
    pytest.param(HEADER.encode() + b"S1000001,\x00,A,B,1970-01-01,,,,,,\n", "pas.csv", "line 2 contains a NUL byte",
                 id="a_nul_byte"),
    pytest.param(HEADER.encode() + b"S1000001,," + b"A" * 200_000 + b",B,1970-01-01,,,,,,\n", "pas.csv",
                 "field larger than field limit", id="a_field_past_the_csv_limit"),
    pytest.param(b"", "pas.csv", "The file is empty", id="empty"),
    pytest.param(b"\n\n", "pas.csv", "The file is empty", id="blank_lines"),
    pytest.param(HEADER.encode(), "pas.csv", "has a header but no rows", id="header_only"),
    pytest.param(b"S1234567,9990000018,SMITH,Margaret,1948-03-14,Female,12 Welford Road,,Leicester,,LE2 7AA\n",
                 "pas.csv", "The header is wrong", id="no_header"),
])
def test_a_file_refused_as_a_whole_says_why(client, login_as, pas_patients, data, name, message):
    login_as("admin")
    answer = upload(client, data, name)
    assert answer.status_code == 422
    html = answer.get_data(as_text=True)
    error = re.search(r'id="extract-error"[^>]*>(.*?)</p>', html, re.S)
    assert error and message in error.group(1).replace("&#39;", "'"), html[:2000]
    assert name in error.group(1)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(PasExtract)) == 0
    event = db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action == Action.PAS_REFUSED)).one()
    assert event.detail in {"header", "encoding", "csv", "empty"}  # the kind, never the file's values


def test_a_value_longer_than_its_column_is_a_bad_line_not_a_database_error(client, login_as, pas_patients):
    login_as("admin")
    html = previewed(client, (HEADER + "S1000001,,GREEN,Gail,1970-12-31,Female," + "x" * 10_000
                              + ",,Town,,LE1 1AA\nS1000002,,GREY,Gus,1962-01-01,,1 Road,,Town,,LE1 1AA\n").encode())
    assert bad_lines_shown(html) == {2: ("address_line1", "address_line1 is longer than 120 characters")}
    assert apply(client).status_code == 303
    run_jobs()
    assert set(registered()) == {"S1234567", "S7654321", "S0000003", "S1000002"}


def test_no_file_and_too_big_are_refused_clearly(client, login_as, pas_patients, monkeypatch):
    login_as("admin")
    none = client.post("/admin/pas/upload", data={"csrf_token": csrf_token(client, "/admin/pas")})
    assert none.status_code == 422 and "Choose the PAS extract to upload" in none.get_data(as_text=True)
    monkeypatch.setattr(extracts, "MAX_EXTRACT_BYTES", len(EXTRACT) - 1)
    big = upload(client, EXTRACT)
    assert big.status_code == 422 and "is larger than" in big.get_data(as_text=True)
    monkeypatch.undo()
    # Past what the site takes in any request: the error page, not a 500.
    huge = upload(client, HEADER.encode() + b"x" * (21 * 1024**2))
    assert huge.status_code == 413 and "The upload is too large" in huge.get_data(as_text=True)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(PasExtract)) == 0


def test_each_preview_and_apply_is_audited_without_patient_values(client, login_as, pas_patients):
    admin = login_as("admin")
    previewed(client)
    apply(client)
    run_jobs()
    extract = the_extract()
    events = db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action.like("pas_%"))
                                .order_by(AuditEvent.id)).all()
    assert [(e.action, e.user_id) for e in events] == [
        (Action.PAS_PREVIEW, admin.id), (Action.PAS_PREVIEW, admin.id), (Action.PAS_IMPORT, admin.id)]
    assert events[0].detail == f"extract {extract.id} uploaded for a preview: {len(EXTRACT)} bytes"
    assert events[1].detail == (f"extract {extract.id} previewed: 9 rows; added 1, updated 1, unchanged 1, "
                                "rejected 6; 1 registered patients not in the file")
    assert events[2].detail == f"extract {extract.id}: added 1, updated 1, unchanged 1, rejected 6"
    assert all(e.actor == admin.email for e in events)
    for event in events:
        assert not [v for v in (*PAS_PATIENT_VALUES, "GREEN", "New Walk", "pas-extract") if v in event.detail]


def test_the_command_line_and_the_page_agree_on_the_same_file(client, runner, tmp_path, login_as, pas_patients):
    login_as("admin")
    html = previewed(client)
    path = tmp_path / "same.csv"
    path.write_bytes(EXTRACT)
    result = runner.invoke(args=["pas", "import", str(path)])
    assert result.exit_code == 1  # bad lines: the operator must look
    shown = figures(html)
    assert (f"PAS import: {shown['Patients added']} added, {shown['Patients updated']} updated, "
            f"{shown['Bad lines, left out']} rejected; {shown['Unchanged']} unchanged") in result.output
    cli_lines = {int(n): text for n, text in re.findall(r"^line (\d+): (.*)$", result.output, re.M)}
    assert {line: problem for line, (_column, problem) in bad_lines_shown(html).items()} == {
        line: text.replace("'", "&#39;") for line, text in cli_lines.items()}
    # The command line's import is the last extract now, and the page's preview is stale.
    html = page_text(client)
    last = html[html.index('id="pas-last"'):]
    assert "same.csv" in last and "the command line (pas import)" in last and "9 rows" in last
    assert apply(client).status_code == 303
    run_jobs()
    assert the_extract().message == extracts.REGISTER_CHANGED


def test_the_progress_polls_until_the_apply_is_done_then_updates_the_facts(client, login_as, pas_patients):
    login_as("admin")
    upload(client, EXTRACT)
    fragment = client.get("/admin/pas/extract", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert 'hx-trigger="every 1s"' in fragment and 'aria-busy="true"' in fragment and "<progress" in fragment
    run_jobs()
    fragment = client.get("/admin/pas/extract", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "hx-trigger" not in fragment and "Preview: what applying it would do" in fragment
    apply(client)
    run_jobs()
    fragment = client.get("/admin/pas/extract", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "Applied: 1 added" in fragment
    assert 'id="pas-last" aria-labelledby="pas-last-title" hx-swap-oob="true"' in fragment
    assert client.get("/admin/pas/extract").status_code == 302  # without htmx: the page


@pytest.mark.parametrize("role", ["requester", "analyst", "am_radiology", "radiologist"])
def test_only_an_admin_reaches_the_pas_upload(client, login_as, role):
    login_as(role)
    assert client.get("/admin/pas").status_code == 403
    assert client.get("/admin/pas/extract").status_code == 403
    landing = client.get("/", follow_redirects=True).get_data(as_text=True)
    token = re.search(r'"X-CSRFToken": "([^"]+)"', landing).group(1)
    for url in ("/admin/pas/upload", "/admin/pas/apply"):
        assert client.post(url, data={"csrf_token": token}).status_code == 403


def test_the_admin_home_links_the_pas_register(client, login_as):
    login_as("admin")
    html = client.get("/admin/").get_data(as_text=True)
    assert 'href="/admin/pas"' in html and "PAS register" in html
