"""The CD upload's URLs (issue 12.1): announce the files, send their bytes, follow progress.

    POST /requests/<call_ref>/cd-upload                                    manifest in, file ids out
    PUT  /requests/<call_ref>/cd-upload/<upload_id>/files/<file_id>?offset=N   one chunk (raw body)
    GET  /requests/<call_ref>/cd-upload/<upload_id>                        JSON: state, counts, files
    GET  /requests/<call_ref>/cd-upload/<upload_id>/progress               HTML fragment (htmx)

Who: the request's requester or a desk role (`visible_request`: 404/403 for anyone else).
CSRF: Flask-WTF checks every POST and PUT (cd_upload.js sends the page's token as
X-CSRFToken). Every id is checked to belong to the upload, and the upload to the request.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, jsonify, render_template, request
from flask_login import current_user

from app.cds import uploads
from app.cds.models import CdFile, CdUpload
from app.extensions import db
from app.ids import whole_number
from app.requests.access import visible_request
from app.requests.models import Request

bp = Blueprint("cds", __name__)


def _json(status: int, **body: object) -> tuple[Response, int]:
    return jsonify(body), status


def upload_of(req: Request, upload_id: int) -> CdUpload:
    """The upload `upload_id` of `req`; aborts 404 when it is another request's or none."""
    upload = db.session.get(CdUpload, upload_id)
    if upload is None or upload.request_id != req.id:
        abort(404)
    return upload


def _file_of(upload: CdUpload, file_id: int) -> CdFile:
    """The file `file_id` of `upload`; aborts 404 when it is another upload's or none."""
    file = db.session.get(CdFile, file_id)
    if file is None or file.upload_id != upload.id:
        abort(404)
    return file


@bp.app_template_filter("cd_progress")
def cd_progress(upload: CdUpload) -> uploads.Progress:
    return uploads.progress_of(upload)


@bp.app_template_filter("cd_upload_open")
def cd_upload_open(req: Request) -> bool:
    return uploads.can_upload(req)


@bp.route("/requests/<call_ref>/cd-upload", methods=["POST"])
def start(call_ref: str):
    """Announce a CD's files (JSON: kind, files [{path, size}]); answer the upload and its file ids."""
    req = visible_request(call_ref)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _json(400, errors={"files": ["Send the list of files as JSON: {\"files\": [{\"path\", \"size\"}]}."]})
    try:
        started = uploads.start_upload(req, current_user, body.get("files"), body.get("kind"))
    except uploads.ManifestInvalid as invalid:
        return _json(400, errors=invalid.errors)
    except uploads.UploadRefused as refused:
        return _json(refused.status, error=refused.message)
    return _json(200 if started.resumed else 201, resumed=started.resumed, **uploads.describe(started.upload))


@bp.route("/requests/<call_ref>/cd-upload/<int:upload_id>/files/<int:file_id>", methods=["PUT"])
def chunk(call_ref: str, upload_id: int, file_id: int):
    """One chunk of one file (the raw body, at most 8 MiB) at ?offset=N; answers {received}."""
    req = visible_request(call_ref)
    upload = upload_of(req, upload_id)
    file = _file_of(upload, file_id)
    offset = whole_number(request.args.get("offset", ""), 0, uploads.MAX_FILE_BYTES)
    if offset is None:
        return _json(400, error="The offset must be a whole number of bytes.", received=file.received)
    try:
        # request.stream, read in 64 KiB pieces: never request.get_data(), never the whole body.
        result = uploads.receive_chunk(upload, file, offset, request.stream, request.content_length,
                                       user_id=current_user.id)
    except uploads.ChunkRefused as refused:
        return _json(refused.status, error=refused.message, received=refused.received)
    body: dict[str, object] = {"received": result.received, "complete": result.complete}
    if result.queued is not None:
        body |= {"queued": result.queued, "message": result.message}
    return _json(200, **body)


@bp.route("/requests/<call_ref>/cd-upload/<int:upload_id>")
def status(call_ref: str, upload_id: int):
    """The upload's state and every file's bytes so far (the browser resumes from it)."""
    req = visible_request(call_ref)
    return _json(200, **uploads.describe(upload_of(req, upload_id)))


@bp.route("/requests/<call_ref>/cd-upload/<int:upload_id>/progress")
def progress(call_ref: str, upload_id: int):
    """The upload's progress as the page shows it (an htmx fragment)."""
    req = visible_request(call_ref)
    upload = upload_of(req, upload_id)
    return render_template("cds/_progress.html", req=req, cd_upload=upload, progress=uploads.progress_of(upload))
