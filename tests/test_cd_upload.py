"""Uploading a CD's contents from its request's page (issue 12.1), through the test client.

The protocol: POST the manifest (JSON), then PUT each file's bytes in chunks at the offset
the desk has; the last byte makes the upload SCANNING and queues its scan on the real Redis.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading

import pytest
import sqlalchemy as sa
from rq import Queue

from app import audit
from app.cds import jobs, storage, uploads
from app.cds.models import CdFile, CdUpload, CdUploadState
from app.extensions import db, redis_conn
from app.queues import INBOUND
from app.requests.models import Request
from app.requests.statuses import Status
from tests.conftest import csrf_token, post_form
from tests.forms_data import valid_cd, valid_import

MiB = 1024 * 1024


@pytest.fixture
def requester(login_as, pas_patients):
    return login_as("requester")


def submit(client, url: str, data: dict[str, str]) -> str:
    response = post_form(client, url, data)
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    return response.headers["Location"].split("/requests/")[1].split("?")[0]


@pytest.fixture
def cd_ref(client, requester) -> str:
    return submit(client, "/requests/new/cd", valid_cd())


@pytest.fixture
def token(client, cd_ref) -> str:
    return csrf_token(client, f"/requests/{cd_ref}")


@pytest.fixture
def inbound(app):
    queue = Queue(INBOUND, connection=redis_conn())
    queue.empty()
    yield queue
    queue.empty()


def start(client, ref: str, token: str, files, kind: str | None = "folder"):  # noqa: ANN001, ANN201
    body: dict[str, object] = {"files": files}
    if kind is not None:
        body["kind"] = kind
    return client.post(f"/requests/{ref}/cd-upload", data=json.dumps(body), content_type="application/json",
                       headers={"X-CSRFToken": token})


def put(client, ref: str, token: str, upload_id: int, file_id: int, offset: object, data: bytes):  # noqa: ANN001, ANN201
    return client.put(f"/requests/{ref}/cd-upload/{upload_id}/files/{file_id}?offset={offset}", data=data,
                      content_type="application/octet-stream", headers={"X-CSRFToken": token})


def send_all(client, ref: str, token: str, started: dict, contents: dict[str, bytes], chunk: int = 3):  # noqa: ANN001, ANN201
    """Send every file's bytes in chunks of `chunk`, from what the desk has; the last answer."""
    last = None
    for f in started["files"]:
        data = contents[f["path"]]
        offset = f["received"]
        while offset < len(data):
            last = put(client, ref, token, started["upload_id"], f["id"], offset, data[offset:offset + chunk])
            assert last.status_code == 200, last.get_json()
            offset = last.get_json()["received"]
    return last


CD = {"CD/DICOMDIR": b"DICOMDIR-bytes", "CD/DICOM/IM0001": b"\x00" * 10 + b"image one", "CD/README.TXT": b"hi"}


def manifest(contents: dict[str, bytes]) -> list[dict[str, object]]:
    return [{"path": path, "size": len(data)} for path, data in contents.items()]


def uploads_of(ref: str) -> list[CdUpload]:
    db.session.expire_all()
    req = db.session.scalar(sa.select(Request).where(Request.call_ref == ref))
    return list(db.session.scalars(sa.select(CdUpload).where(CdUpload.request_id == req.id).order_by(CdUpload.id)))


# --- the whole way ----------------------------------------------------------------------------


def test_a_cd_uploaded_in_chunks_is_stored_by_id_then_scanning_with_its_scan_queued(client, cd_ref, token, inbound):
    response = start(client, cd_ref, token, manifest(CD))
    assert response.status_code == 201
    started = response.get_json()
    assert started["resumed"] is False and started["state"] == "uploading"
    assert [(f["path"], f["received"]) for f in started["files"]] == [(p, 0) for p in CD]
    last = send_all(client, cd_ref, token, started, CD)
    assert last.get_json() == {"received": len(b"hi"), "complete": True, "queued": True,
                               "message": "All files received; the scan has started."}
    [upload] = uploads_of(cd_ref)
    assert upload.state == CdUploadState.SCANNING and upload.completed_at is not None
    assert upload.bytes_received == upload.bytes_expected == sum(map(len, CD.values()))
    for f in upload.files:
        assert storage.file_path(upload.id, f.id).read_bytes() == CD[f.relpath]
    assert sorted(p.name for p in storage.upload_dir(upload.id).rglob("*") if p.is_file()) == sorted(
        f"{f.id}.bin" for f in upload.files)  # named by id; no spool left behind
    assert f"cd-scan-{upload.id}" in inbound.job_ids
    job = inbound.fetch_job(f"cd-scan-{upload.id}")
    assert job.func_name == "app.cds.jobs.scan_upload" and job.args == (upload.id,)
    details = db.session.scalars(sa.select(audit.AuditEvent.detail).where(
        audit.AuditEvent.action == "cd_upload").order_by(audit.AuditEvent.id)).all()
    assert details[-1] == f"upload {upload.id} complete: 3 files, {upload.bytes_expected} bytes"
    assert "DICOMDIR" not in " ".join(details)  # counts, never the CD's names
    page = client.get(f"/requests/{cd_ref}").get_data(as_text=True)
    assert "All 3 files received — scanning" in page
    fragment = client.get(f"/requests/{cd_ref}/cd-upload/{upload.id}/progress").get_data(as_text=True)
    assert "All 3 files received — scanning" in fragment
    # Complete: no more chunks taken.
    again = put(client, cd_ref, token, upload.id, upload.files[0].id, 0, b"x")
    assert again.status_code == 409


def test_redis_down_at_completion_says_so_truthfully(client, cd_ref, token, monkeypatch, tmp_path):
    from redis import Redis

    dead = Redis(unix_socket_path=str(tmp_path / "no-redis.sock"), socket_connect_timeout=0.5)
    monkeypatch.setattr(jobs, "queue", lambda name: Queue(name, connection=dead))
    started = start(client, cd_ref, token, manifest(CD)).get_json()
    last = send_all(client, cd_ref, token, started, CD, chunk=100)
    assert last.get_json()["queued"] is False
    assert last.get_json()["message"] == "All files received; the scan starts when the queue is back."
    assert uploads_of(cd_ref)[0].state == CdUploadState.SCANNING  # the reconciler queues it later


def test_the_page_shows_the_upload_section_only_on_cd_requests_and_says_js_is_needed(client, cd_ref):
    page = client.get(f"/requests/{cd_ref}").get_data(as_text=True)
    assert 'id="cd-folder"' in page and "webkitdirectory" in page
    assert "<noscript>" in page and "contents needs JavaScript" in page
    assert "/static/js/cd_upload.js" in page
    other = submit(client, "/requests/new/import", valid_import())
    assert "cd-upload" not in client.get(f"/requests/{other}").get_data(as_text=True)


# --- resuming --------------------------------------------------------------------------------


def test_a_dropped_chunk_is_resent_from_what_the_desk_has(client, cd_ref, token):
    started = start(client, cd_ref, token, manifest(CD)).get_json()
    upload_id, image = started["upload_id"], started["files"][1]
    data = CD["CD/DICOM/IM0001"]
    assert put(client, cd_ref, token, upload_id, image["id"], 0, data[:5]).get_json()["received"] == 5
    # The browser never saw that answer (connection dropped) and sends offset 0 again.
    stale = put(client, cd_ref, token, upload_id, image["id"], 0, data[:5])
    assert stale.status_code == 409 and stale.get_json()["received"] == 5
    ahead = put(client, cd_ref, token, upload_id, image["id"], 12, data[12:])
    assert ahead.status_code == 409 and ahead.get_json()["received"] == 5
    assert put(client, cd_ref, token, upload_id, image["id"], 5, data[5:]).get_json()["received"] == len(data)
    upload = uploads_of(cd_ref)[0]
    assert storage.file_path(upload_id, image["id"]).read_bytes() == data
    assert upload.bytes_received == len(data)


def test_the_same_manifest_resumes_the_unfinished_upload(client, cd_ref, token):
    first = start(client, cd_ref, token, manifest(CD)).get_json()
    put(client, cd_ref, token, first["upload_id"], first["files"][0]["id"], 0, CD["CD/DICOMDIR"])
    # The tab was closed; the page says so, and the same folder is chosen again (in another order).
    page = client.get(f"/requests/{cd_ref}").get_data(as_text=True)
    assert "An upload of 3 files is unfinished: choose the same folder to resume." in page
    again = start(client, cd_ref, token, list(reversed(manifest(CD))))
    assert again.status_code == 200
    body = again.get_json()
    assert body["resumed"] is True and body["upload_id"] == first["upload_id"]
    assert {f["path"]: f["received"] for f in body["files"]}["CD/DICOMDIR"] == len(CD["CD/DICOMDIR"])
    status = client.get(f"/requests/{cd_ref}/cd-upload/{first['upload_id']}").get_json()
    assert status["files_done"] == 1 and status["bytes_received"] == len(CD["CD/DICOMDIR"])
    send_all(client, cd_ref, token, body, CD)
    assert [u.state for u in uploads_of(cd_ref)] == [CdUploadState.SCANNING]


def test_a_different_manifest_replaces_the_unfinished_upload(client, cd_ref, token):
    first = start(client, cd_ref, token, manifest(CD)).get_json()
    put(client, cd_ref, token, first["upload_id"], first["files"][0]["id"], 0, CD["CD/DICOMDIR"])
    assert storage.upload_dir(first["upload_id"]).exists()
    other = {"DISK2/IM1": b"one", "DISK2/IM2": b"two"}
    second = start(client, cd_ref, token, manifest(other))
    assert second.status_code == 201 and second.get_json()["upload_id"] != first["upload_id"]
    old, new = uploads_of(cd_ref)
    assert old.state == CdUploadState.PURGED and old.purge_reason == "replaced by a new upload"
    assert old.purged_at is not None and not storage.upload_dir(old.id).exists()
    assert new.state == CdUploadState.UPLOADING and new.files_expected == 2
    stale = put(client, cd_ref, token, old.id, old.files[1].id, 0, b"x")
    assert stale.status_code == 409
    detail = db.session.scalars(sa.select(audit.AuditEvent.detail).where(
        audit.AuditEvent.action == "cd_upload").order_by(audit.AuditEvent.id.desc())).first()
    assert f"replaces upload {old.id}" in detail


def test_a_scanned_upload_is_replaced_but_a_sent_one_is_not(client, cd_ref, token):
    first = start(client, cd_ref, token, manifest(CD)).get_json()
    upload = db.session.get(CdUpload, first["upload_id"])
    upload.state = CdUploadState.SCANNED
    db.session.commit()
    assert start(client, cd_ref, token, [{"path": "X", "size": 1}]).status_code == 201
    assert db.session.get(CdUpload, first["upload_id"]).state == CdUploadState.PURGED
    latest = uploads_of(cd_ref)[-1]
    for state in (CdUploadState.SENDING, CdUploadState.SENT):
        latest.state = state
        db.session.commit()
        refused = start(client, cd_ref, token, [{"path": "Y", "size": 1}])
        assert refused.status_code == 409
        assert "sent to PACS" in refused.get_json()["error"]
    assert len(uploads_of(cd_ref)) == 2


# --- what the desk refuses ------------------------------------------------------------------


BIG = uploads.MAX_FILE_BYTES
REFUSED = {
    "empty": ([], "No files were chosen: choose a folder, files or a .zip."),
    "not_a_list": ({"path": "a", "size": 1}, "The list of files is missing: choose a folder, files or a .zip."),
    "too_many_files": ([{"path": f"f{i}", "size": 1} for i in range(20_001)],
                       "A CD upload may hold at most 20,000 files; this one has 20,001."),
    "negative_size": ([{"path": "a", "size": -1}], "File 1 (a): its size is not a whole number of bytes."),
    "fractional_size": ([{"path": "a", "size": 1.5}], "File 1 (a): its size is not a whole number of bytes."),
    "true_is_not_a_size": ([{"path": "a", "size": True}], "File 1 (a): its size is not a whole number of bytes."),
    "text_size": ([{"path": "a", "size": "10"}], "File 1 (a): its size is not a whole number of bytes."),
    "file_past_1_gb": ([{"path": "a", "size": BIG + 1}], "File 1 (a) is larger than 1 GB; no file of a CD is."),
    "total_past_2_gb": ([{"path": f"f{i}", "size": BIG} for i in range(3)],
                        "The files add up to 3.0 GB; a CD upload may be at most 2 GB."),
    "path_past_500": ([{"path": "d/" * 250 + "x", "size": 1}], "File 1: its name is longer than 500 characters."),
    "no_path": ([{"size": 1}], "File 1: its name is missing."),
    "blank_path": ([{"path": "  ", "size": 1}], "File 1: its name is missing."),
    "nul_in_path": ([{"path": "a\x00b", "size": 1}], "File 1: its name holds a NUL character, which no file name can."),
    "lone_surrogate": ([{"path": "a\ud800", "size": 1}], "File 1: its name is not valid text."),
    "duplicate_path": ([{"path": "a", "size": 1}, {"path": "a", "size": 1}], "File 2 (a) is listed twice."),
    "extra_keys": ([{"path": "a", "size": 1, "mode": "0777"}], "File 1: expected a path and a size."),
    "not_an_object": (["a"], "File 1: expected a path and a size."),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_a_hostile_manifest_is_refused_with_its_reason_and_nothing_saved(client, cd_ref, token, case):
    files, message = REFUSED[case]
    response = start(client, cd_ref, token, files)
    assert response.status_code == 400
    assert message in response.get_json()["errors"]["files"]
    assert uploads_of(cd_ref) == []


def test_the_kind_and_the_body_are_checked_too(client, cd_ref, token):
    bad_kind = start(client, cd_ref, token, [{"path": "a", "size": 1}], kind="iso")
    assert bad_kind.get_json()["errors"]["kind"] == ["The kind of upload must be folder, files or zip."]
    two_zips = start(client, cd_ref, token, [{"path": "a.zip", "size": 1}, {"path": "b.zip", "size": 1}], kind="zip")
    assert "A .zip is uploaded on its own: choose one .zip file." in two_zips.get_json()["errors"]["files"]
    not_json = client.post(f"/requests/{cd_ref}/cd-upload", data="files=a", headers={"X-CSRFToken": token},
                           content_type="application/x-www-form-urlencoded")
    assert not_json.status_code == 400 and "errors" in not_json.get_json()
    many_problems = start(client, cd_ref, token, [{"path": f"f{i}", "size": -1} for i in range(50)])
    errors = many_problems.get_json()["errors"]["files"]
    assert len(errors) == 21 and errors[-1] == "…and 30 more problems."
    assert uploads_of(cd_ref) == []


def test_a_path_with_control_characters_is_kept_as_text_and_a_climbing_path_never_reaches_the_disk(
    client, cd_ref, token, app
):
    contents = {"../../x": b"climb", "/etc/passwd": b"abs", "CD/\x1b[31mred": b"ctl"}
    started = start(client, cd_ref, token, manifest(contents), kind="files").get_json()
    send_all(client, cd_ref, token, started, contents)
    upload = uploads_of(cd_ref)[0]
    assert sorted(f.relpath for f in upload.files) == sorted(contents)
    root = storage.cds_root()
    assert not (root.parent / "x").exists() and not (storage.upload_dir(upload.id).parent.parent / "x").exists()
    stored = sorted(p.relative_to(storage.upload_dir(upload.id)).as_posix()
                    for p in storage.upload_dir(upload.id).rglob("*") if p.is_file())
    assert stored == sorted(f"files/{f.id}.bin" for f in upload.files)
    for f in upload.files:
        assert storage.file_path(upload.id, f.id).read_bytes() == contents[f.relpath]


def test_bytes_past_the_announced_size_are_refused(client, cd_ref, token):
    started = start(client, cd_ref, token, [{"path": "a", "size": 4}]).get_json()
    file_id = started["files"][0]["id"]
    too_much = put(client, cd_ref, token, started["upload_id"], file_id, 0, b"12345")
    assert too_much.status_code == 400 and too_much.get_json()["received"] == 0
    assert "past the file's announced size (4 bytes)" in too_much.get_json()["error"]
    assert put(client, cd_ref, token, started["upload_id"], file_id, 0, b"123").status_code == 200
    assert put(client, cd_ref, token, started["upload_id"], file_id, 3, b"45").status_code == 400
    assert db.session.get(CdFile, file_id).received == 3


def test_a_chunk_past_8_mib_is_refused_unread(client, cd_ref, token):
    started = start(client, cd_ref, token, [{"path": "a", "size": 20 * MiB}]).get_json()
    response = put(client, cd_ref, token, started["upload_id"], started["files"][0]["id"], 0, b"\0" * (8 * MiB + 1))
    assert response.status_code == 413
    assert uploads_of(cd_ref)[0].bytes_received == 0


@pytest.mark.parametrize("offset", ["-1", "abc", "", str(2**63), "99999999999999999999", "1e3", "²"])
def test_a_hostile_offset_is_a_400(client, cd_ref, token, offset):
    started = start(client, cd_ref, token, [{"path": "a", "size": 4}]).get_json()
    response = put(client, cd_ref, token, started["upload_id"], started["files"][0]["id"], offset, b"1")
    assert response.status_code == 400


def test_ids_of_another_upload_or_request_are_404(client, cd_ref, token):
    first = start(client, cd_ref, token, manifest(CD)).get_json()
    other_ref = submit(client, "/requests/new/cd", {**valid_cd(), "exams-0-description": "CT head (Spire)",
                                                     "confirm_duplicate": "y"})
    other = start(client, other_ref, token, [{"path": "a", "size": 1}]).get_json()
    upload_id, file_id = first["upload_id"], first["files"][0]["id"]
    assert put(client, other_ref, token, upload_id, file_id, 0, b"D").status_code == 404  # upload of another request
    assert put(client, cd_ref, token, upload_id, other["files"][0]["id"], 0, b"a").status_code == 404  # another's file
    assert put(client, cd_ref, token, upload_id, 424242, 0, b"a").status_code == 404
    assert put(client, cd_ref, token, 2**31, file_id, 0, b"a").status_code == 404
    assert client.get(f"/requests/{other_ref}/cd-upload/{upload_id}").status_code == 404
    assert client.get(f"/requests/{other_ref}/cd-upload/{upload_id}/progress").status_code == 404


# --- who may upload, and which requests take one ---------------------------------------------


def test_another_requester_is_refused_and_the_desk_may_upload(app, client, cd_ref, token, make_user):
    started = start(client, cd_ref, token, manifest(CD)).get_json()

    def signed_in(role: str):  # noqa: ANN202
        user = make_user(role)
        browser = app.test_client()
        post_form(browser, "/login", {"email": user.email, "password": "correct-horse-9"})
        return browser, csrf_token(browser, "/requests/new/import")

    stranger, stranger_token = signed_in("requester")
    assert start(stranger, cd_ref, stranger_token, manifest(CD)).status_code == 403
    assert put(stranger, cd_ref, stranger_token, started["upload_id"], started["files"][0]["id"], 0,
               b"D").status_code == 403
    assert stranger.get(f"/requests/{cd_ref}/cd-upload/{started['upload_id']}").status_code == 403
    analyst, analyst_token = signed_in("analyst")
    resumed = start(analyst, cd_ref, analyst_token, manifest(CD))
    assert resumed.status_code == 200 and resumed.get_json()["upload_id"] == started["upload_id"]
    send_all(analyst, cd_ref, analyst_token, resumed.get_json(), CD)
    assert uploads_of(cd_ref)[0].state == CdUploadState.SCANNING
    anonymous = app.test_client()
    assert anonymous.get(f"/requests/{cd_ref}/cd-upload/{started['upload_id']}").status_code == 302


def test_a_request_that_is_not_a_cd_import_takes_no_upload(client, requester, token):
    ref = submit(client, "/requests/new/import", valid_import())
    response = start(client, ref, token, manifest(CD))
    assert response.status_code == 400
    assert response.get_json()["error"] == "Only a CD import request takes a CD upload."


@pytest.mark.parametrize("status", [Status.DOWNLOAD_REQUEST, Status.DOWNLOADING, Status.DELIVERED,
                                    Status.COMPLETED, Status.CANCELLED, Status.DECLINED, Status.PURGED])
def test_a_cd_request_past_its_upload_takes_none(client, cd_ref, token, status):
    req = db.session.scalar(sa.select(Request).where(Request.call_ref == cd_ref))
    req.status = status
    db.session.commit()
    response = start(client, cd_ref, token, manifest(CD))
    assert response.status_code == 409
    assert response.get_json()["error"] == f"This request is {status.value}: it takes no CD upload now."
    assert 'id="cd-folder"' not in client.get(f"/requests/{cd_ref}").get_data(as_text=True)


def test_without_the_csrf_token_nothing_is_taken(client, cd_ref, token):
    response = client.post(f"/requests/{cd_ref}/cd-upload", data=json.dumps({"files": manifest(CD)}),
                           content_type="application/json")
    assert response.status_code == 400 and "Form expired" in response.get_data(as_text=True)
    assert uploads_of(cd_ref) == []
    started = start(client, cd_ref, token, manifest(CD)).get_json()
    bare = client.put(f"/requests/{cd_ref}/cd-upload/{started['upload_id']}/files/{started['files'][0]['id']}"
                      "?offset=0", data=b"D", headers={"X-CSRFToken": "forged"})
    assert bare.status_code == 400
    assert db.session.get(CdFile, started["files"][0]["id"]).received == 0


# --- memory and concurrency -------------------------------------------------------------------


class Recorder(io.RawIOBase):
    """A request stream that notes the size of every read."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self.reads: list[int] = []

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        self.reads.append(size)
        return self.inner.read(size)


def test_a_50_mb_file_is_streamed_in_64_kib_pieces_never_read_whole(app, client, cd_ref, token, monkeypatch):
    recorders: list[Recorder] = []
    real = uploads.receive_chunk

    def spy(upload, file, offset, stream, length, **kwargs):  # noqa: ANN001, ANN202
        recorders.append(Recorder(stream))
        return real(upload, file, offset, recorders[-1], length, **kwargs)

    def no_get_data(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the chunk route read the whole body with get_data()")

    data = hashlib.sha256(b"seed").digest() * (50 * MiB // 32)
    started = start(client, cd_ref, token, [{"path": "CD/BIG.DCM", "size": len(data)}]).get_json()
    monkeypatch.setattr(uploads, "receive_chunk", spy)
    monkeypatch.setattr(app.request_class, "get_data", no_get_data)  # from here on: chunks only
    last = send_all(client, cd_ref, token, started, {"CD/BIG.DCM": data}, chunk=8 * MiB)
    assert last.get_json()["complete"] is True
    assert len(recorders) == 7  # 50 MB in 8 MiB chunks
    reads = [size for r in recorders for size in r.reads]
    assert max(reads) == uploads.COPY_PIECE and min(reads) > 0
    upload = uploads_of(cd_ref)[0]
    stored = storage.file_path(upload.id, upload.files[0].id)
    assert stored.stat().st_size == len(data)
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_two_chunks_for_one_file_at_once_append_once(app, client, cd_ref, token, monkeypatch):
    started = start(client, cd_ref, token, [{"path": "a", "size": 8}]).get_json()
    upload_id, file_id = started["upload_id"], started["files"][0]["id"]
    both_spooled = threading.Barrier(2, timeout=20)
    real_spool = uploads._spool

    def spool_then_wait(*args):  # noqa: ANN002, ANN202
        path = real_spool(*args)
        both_spooled.wait()  # both requests hold their chunk before either claims the offset
        return path

    monkeypatch.setattr(uploads, "_spool", spool_then_wait)
    answers: list = []

    def send(data: bytes) -> None:
        answers.append(put(client, cd_ref, token, upload_id, file_id, 0, data))

    threads = [threading.Thread(target=send, args=(data,)) for data in (b"AAAA", b"BBBB")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(a.status_code for a in answers) == [200, 409]
    [refused] = [a for a in answers if a.status_code == 409]
    assert refused.get_json()["received"] == 4
    stored = storage.file_path(upload_id, file_id).read_bytes()
    assert stored in (b"AAAA", b"BBBB")
    db.session.expire_all()
    assert db.session.get(CdFile, file_id).received == 4
    assert db.session.get(CdUpload, upload_id).bytes_received == 4
    assert not list((storage.upload_dir(upload_id) / "incoming").iterdir())  # no spool left


def test_an_all_empty_manifest_is_complete_at_once(client, cd_ref, token, inbound):
    response = start(client, cd_ref, token, [{"path": "EMPTY1", "size": 0}, {"path": "EMPTY2", "size": 0}])
    assert response.status_code == 201 and response.get_json()["state"] == "scanning"
    assert f"cd-scan-{response.get_json()['upload_id']}" in inbound.job_ids
