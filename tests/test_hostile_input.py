"""Crafted input never gives a 5xx (review point 11.7).

Every route the desk serves is listed in SURFACES with the role that reaches it, the
fields it reads from a POST, the query parameters it parses and a valid submission to
start from. Each field is then sent on its own, on top of that valid submission, with a
NUL byte, numbers outside every integer range, 10,000 characters and (on the desk) crafted
page cursors; each URL parameter is sent the same way. No answer may be a 5xx, on SQLite
or on PostgreSQL, and an over-long value typed into a form field is refused by naming the
field, with the value kept for the user to correct.

The list is checked against the app: a new route, a new URL parameter, a new form (a
FlaskForm subclass) or a new `request.form`/`request.args` name read by a view fails
`test_every_route_form_and_parameter_is_probed` until it is added here.
"""

from __future__ import annotations

import base64
import inspect
import json
import re
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from flask_wtf import FlaskForm
from wtforms import BooleanField, FieldList, FormField, HiddenField, PasswordField, StringField
from wtforms.fields.choices import SelectFieldBase
from wtforms.fields.core import UnboundField
from wtforms.validators import Length

from app.admin.auditview import AuditFilterForm, PatientForm
from app.admin.places import InstitutionForm
from app.admin.training import TrainingForm
from app.admin.users import RoleForm, UserForm
from app.auth.forms import LoginForm, PasswordChangeForm
from app.auth.models import User
from app.auth.training import TrainingRecord
from app.cds import uploads as cd_uploads
from app.cds.collection import CollectForm
from app.cds.models import CdUpload, CdUploadState
from app.cds.scan import ScanResult
from app.desk.forms import EditForm, FilterForm
from app.desk.queries import SORTS
from app.extensions import db
from app.intake.forms import CDForm, ExamLineForm, ExportForm, ImportForm, PatientLookupForm, RequestForm
from app.intake.service import RequestValues, create_request
from app.requests.models import ExamLine, Institution, Request
from app.requests.statuses import Kind, Priority, Status
from app.timeutil import local_today
from app.transfers import service as transfers
from app.transfers.models import Direction, InboundStudy
from app.transfers.nodes import NODE_FIELDS, upsert_node
from app.trauma import service as trauma
from app.trauma.forms import TraumaForm
from app.workflow.machine import transition
from app.workflow.models import Message, OutboxEmail, OutboxStatus
from app.workflow.routes import MessageForm
from tests.conftest import _CSRF
from tests.forms_data import valid_cd, valid_export, valid_import

NUL = "S12\x0034567"
LONG = "x" * 10_000
# Past 64 bits, a float, negative, past 63 and 31 bits (SQLite's and PostgreSQL's integers),
# no row's id (twice), and a digit to str.isdigit that int() refuses.
NUMBERS = ("99999999999999999999", "1e20", "-1", str(2**63), str(2**31), "0", "424242", "²")
CRAFTED = (NUL, LONG, *NUMBERS)
ACTIONS = ("remove_exam:²", "remove_exam:99999999999999999999", "remove_exam:-1", "add_exam")
UNKNOWN_ID = "424242"  # an id no row has


def _cursor(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


# Page cursors the desk never wrote: not base64, not JSON, the wrong shape, ids past every
# integer range, values of the wrong type for the column sorted on.
CURSORS = (
    "!!not-base64!!", _cursor("a string"), _cursor([]), _cursor([1, 2, 3]), _cursor(["x", 2**63]),
    _cursor(["x", -(2**63) - 1]), _cursor([2**63, 1]), _cursor([{"dt": "yesterday"}, 1]),
    _cursor([{"dt": "9999-12-31T23:59:59+14:00"}, 2**31]), _cursor([{"dt": 5}, 1]), _cursor(["S", True]),
    _cursor([[1], 1]), _cursor([{"a": 1}, 1]), _cursor([1.5, 1]), _cursor([None, 1]), _cursor(["New", 1.0]),
    "W05hTiwgMV0",  # [NaN, 1]
    base64.urlsafe_b64encode(b"[" * 700).decode(),  # nested deep: within the length a cursor may have
    base64.urlsafe_b64encode(b"[" * 5000).decode(),  # nested deeper than the JSON parser goes
)

STUDY = "1.2.826.0.1.3680043.8.498.301"


# --- What each route reads ---------------------------------------------------------------------


def form_fields(form_class: type[FlaskForm]) -> tuple[str, ...]:
    """The names a browser posts for `form_class`, in the order declared (exam lines: the first)."""
    unbound = sorted(inspect.getmembers(form_class, lambda v: isinstance(v, UnboundField)),
                     key=lambda item: item[1].creation_counter)
    names: list[str] = []
    for name, field_ in unbound:
        if issubclass(field_.field_class, FieldList) and issubclass(field_.args[0].field_class, FormField):
            names.extend(f"{name}-0-{sub}" for sub in form_fields(field_.args[0].args[0]))
        else:
            names.append(name)
    return tuple(names)


def typed_fields(form_class: type[FlaskForm]) -> frozenset[str]:
    """The fields a person types or chooses (not hidden state, not check boxes): an over-long
    value in one of them must come back as that field's error."""
    quiet = (HiddenField, BooleanField)
    unbound = dict(inspect.getmembers(form_class, lambda v: isinstance(v, UnboundField)))
    return frozenset(name for name in form_fields(form_class)
                     if not issubclass(unbound[name.split("-")[0]].field_class, quiet))


@dataclass(frozen=True)
class Surface:
    """One route as an attacker sees it."""

    endpoint: str
    role: str | None  # who is signed in (None: nobody)
    url: str  # {parameters} filled as `path` says
    form: type[FlaskForm] | None = None
    fields: tuple[str, ...] = ()  # POSTed fields (besides the form's own)
    query: tuple[str, ...] = ()  # query-string parameters parsed on GET
    path: Mapping[str, str] = field(default_factory=dict)  # URL parameter -> the scene's row for it, or a literal
    base: Callable[[Scene], dict[str, str]] | None = None  # a valid POST; None: post the probed field alone
    base_status: int | None = None  # what the valid POST answers, so the probes reach past the checks
    named: frozenset[str] = frozenset()  # an over-long value is refused naming the field...
    named_status: int | None = 422  # ... with this status (None: any non-5xx)
    error_id: str = "{field}-error"  # the id of a field's error on the page
    htmx: bool = False
    cursors: bool = False  # also post every crafted cursor under every sort
    post_only: bool = False  # the GET probes are another surface's (same endpoint)
    shows_back: bool = True  # the answer shows an over-long value back in its field
    label: str = ""  # tells apart two surfaces of one endpoint in the test's id
    parts: int = 1  # a long form's fields are sent by this many tests, so they run side by side
    probed_elsewhere: type[FlaskForm] | None = None  # a base form whose fields another surface probes

    @property
    def posted(self) -> tuple[str, ...]:
        shared = set(form_fields(self.probed_elsewhere)) if self.probed_elsewhere else set()
        own = [name for name in (form_fields(self.form) if self.form else ()) if name not in shared]
        return (*own, *self.fields)
    needs: frozenset[str] = frozenset()  # extra rows: nodes, transfer, mail, arrival, cd_upload, cd_scanned, ...


def _request_form(valid: Callable[[], dict[str, str]]) -> Callable[[Scene], dict[str, str]]:
    def base(scene: Scene) -> dict[str, str]:
        # A new key each time and "submit anyway": every probe that passes is saved, so it
        # reaches the database instead of stopping at the double-submit or duplicate check.
        return {**valid(), "submission_key": str(uuid.uuid4()), "confirm_duplicate": "y"}
    return base


def _edit_base(scene: Scene) -> dict[str, str]:
    db.session.expire_all()
    req = db.session.get_one(Request, scene.ids["import"])
    return {"version": str(req.version), "status": req.status.value, "assigned_to": str(scene.analyst_id),
            "note": "", "mbp_call_ref": "NTT-1", "imaging_uploaded_by": "A", "images_fixed_up_by": "B",
            "date_imaging_sent": "", "decline_reason": ""}


def _correction_base(scene: Scene) -> dict[str, str]:
    """A valid correction of the import, which is put back to Awaiting Details first: every
    probe reaches the form, as the requester's would (issue 13.7)."""
    db.session.expire_all()
    req = db.session.get_one(Request, scene.ids["import"])
    if req.status != Status.AWAITING_DETAILS:
        transition(req, Status.AWAITING_DETAILS, actor_id=None, actor="test", note="Which hospital?")
        db.session.commit()
    return {**valid_import(), "consultant": f"Dr {uuid.uuid4().hex[:8]}"}


def _trauma_base(action: str) -> Callable[[Scene], dict[str, str]]:
    def base(scene: Scene) -> dict[str, str]:
        picked = trauma.PickedStudy(study_uid=STUDY, study_date="20260101", description="CT head", modalities="CT",
                                    images=10, accession="A1")
        return {"action": action, "s_number": "S1234567", "nhs_number": "999 000 0018", "no_nhs_reason": "",
                "patient_checked": "1", "studies_token": scene.sealed(picked), "study_uid": STUDY,
                "report_study": STUDY, "report_text": "CT head: no bleed.", "date_from": "", "date_to": "",
                "description": "", "modality": "", "accession": ""}
    return base


CALL_REF = {"call_ref": "import"}
EXPORT_REF = {"call_ref": "export"}
CD_SCANNED = {"call_ref": "cd", "upload_id": "cd_scanned"}
CD_REF = {"call_ref": "cd"}
USER = {"user_id": "analyst"}
DESK_FILTERS = ("tab_choice", "sort_choice", "page_cursor")
REPORT_PERIOD = ("period", "year", "month", "half")

SURFACES: tuple[Surface, ...] = (
    Surface("main.home", "requester", "/"),
    Surface("main.healthz", None, "/healthz"),
    Surface("admin.home", "admin", "/admin/"),
    # The institution register (issue 14.2): the scene's requests name its institution, so
    # its delete is refused (409).
    Surface("admin.institutions", "admin", "/admin/institutions", query=("q",)),
    Surface("admin.new_institution", "admin", "/admin/institutions/new", form=InstitutionForm,
            base=lambda s: {"name": f"Leeds {uuid.uuid4().hex[:8]}", "site": "St James's",
                            "email": "imaging@leeds.nhs.uk"}, base_status=302,
            named=typed_fields(InstitutionForm)),
    Surface("admin.edit_institution", "admin", "/admin/institutions/{institution_id}", form=InstitutionForm,
            path={"institution_id": "institution"}, needs=frozenset({"institution", "nodes"}),
            base=lambda s: {"name": "Leeds", "site": "LGI", "email": "imaging@leeds.nhs.uk",
                            "nodes": str(s.ids["leeds"])}, base_status=302, named=typed_fields(InstitutionForm)),
    Surface("admin.institution_active", "admin", "/admin/institutions/{institution_id}/active",
            path={"institution_id": "institution"}, fields=("active",), needs=frozenset({"institution"}),
            base=lambda s: {"active": "0"}, base_status=302),
    Surface("admin.delete_institution", "admin", "/admin/institutions/{institution_id}/delete",
            path={"institution_id": "institution"}, needs=frozenset({"institution"})),
    # The audit viewer (issue 14.5): the patient filter is posted (never in a URL), so the
    # valid submission names one and is answered, not redirected.
    Surface("admin.audit_trail", "admin", "/admin/audit", form=AuditFilterForm,
            query=("user", "call_ref", "action", "date_from", "date_to", "after"),
            base=lambda s: {"patient": "S1234567"}, base_status=200, named=typed_fields(AuditFilterForm)),
    Surface("admin.audit_csv", "admin", "/admin/audit.csv", form=AuditFilterForm,
            base=lambda s: {"patient": "S1234567"}, base_status=200, named=typed_fields(AuditFilterForm)),
    Surface("admin.audit_patient", "admin", "/admin/audit/patient", form=PatientForm,
            base=lambda s: {"patient": "S1234567"}, base_status=200, named=frozenset({"patient"})),
    # The compliance reports (issue 14.6): a GET form of four choices, the same for the files.
    Surface("admin.reports", "admin", "/admin/reports", query=REPORT_PERIOD),
    Surface("admin.reports_csv", "admin", "/admin/reports.csv", query=REPORT_PERIOD),
    Surface("admin.reports_pdf", "admin", "/admin/reports.pdf", query=REPORT_PERIOD),
    Surface("static", None, "/static/{filename}", path={"filename": "css/site.css"}),
    Surface("auth.login", None, "/login", form=LoginForm, query=("next",),
            base=lambda s: {"email": "nobody@test.uhl", "password": "wrong-horse"}, base_status=401,
            named=typed_fields(LoginForm), named_status=200),
    Surface("auth.logout", "requester", "/logout"),
    Surface("auth.stay_signed_in", "requester", "/session/stay"),
    Surface("intake.new_import", "requester", "/requests/new/import", form=ImportForm, fields=("action",),
            base=_request_form(valid_import), base_status=302, named=typed_fields(ImportForm), parts=3),
    Surface("intake.new_export", "requester", "/requests/new/export", form=ExportForm, fields=("action",),
            base=_request_form(valid_export), base_status=302, named=typed_fields(ExportForm),
            probed_elsewhere=RequestForm),  # the patient and contact fields: probed on the import form
    Surface("intake.new_cd", "requester", "/requests/new/cd", form=CDForm, fields=("action",),
            base=_request_form(valid_cd), base_status=302, named=typed_fields(CDForm), probed_elsewhere=RequestForm),
    # The S number autofill (issue 13.8): every patient field crafted; a look-up is never a 5xx,
    # the limit reached included.
    Surface("autofill.patient", "requester", "/requests/new/patient", form=PatientLookupForm, htmx=True,
            base=lambda s: {"s_number": "S1234567"}, base_status=200),
    Surface("intake.mine", "requester", "/requests", fields=("q", "page"), query=("page",),
            base=lambda s: {"q": "smith", "page": "1"}, base_status=200),
    Surface("intake.show", "requester", "/requests/{call_ref}", path=CALL_REF, query=("submitted",)),
    Surface("intake.correct", "requester", "/requests/{call_ref}/correct", path=CALL_REF, form=ImportForm,
            fields=("action",), base=_correction_base, base_status=302, named=typed_fields(ImportForm), parts=3,
            label="import"),
    Surface("intake.cancel", "requester", "/requests/{call_ref}/cancel", path=CALL_REF),
    Surface("printing.form_pdf", "requester", "/requests/{call_ref}/form.pdf", path=CALL_REF),
    Surface("printing.label_pdf", "requester", "/requests/{call_ref}/label.pdf", path={"call_ref": "cd"}),
    Surface("workflow.live", "requester", "/requests/{call_ref}/live", path=CALL_REF),
    Surface("workflow.post_message", "analyst", "/requests/{call_ref}/messages", path=CALL_REF, form=MessageForm,
            base=lambda s: {"body": "Please send the report too.", "kind": "internal"}, base_status=200,
            named=frozenset({"body"}), error_id="body-error", htmx=True,
            shows_back=False),  # the message box sits outside the panel swapped back: the browser keeps it
    Surface("desk.queue", "analyst", "/desk", form=FilterForm, fields=DESK_FILTERS,
            query=("page_cursor", "assigned", "page"), base=lambda s: {"tab": "all"}, base_status=200,
            named=frozenset({"call_ref", "patient_name", "nhs_number", "s_number", "institution"}),
            named_status=200, error_id="filter-{field}-error", parts=2),
    Surface("desk.queue", "analyst", "/desk", base=lambda s: {"tab": "all"}, base_status=200, cursors=True,
            post_only=True, label="cursors"),
    # The queue's code again (`_queue_context`), so only the field the poll adds.
    Surface("desk.table", "analyst", "/desk/table", fields=("stamp",), base=lambda s: {"tab": "all"}, base_status=200),
    Surface("desk.edit", "analyst", "/desk/requests/{call_ref}/edit", path=CALL_REF, form=EditForm,
            base=_edit_base, base_status=302,
            named=frozenset({"note", "mbp_call_ref", "imaging_uploaded_by", "images_fixed_up_by",
                             "date_imaging_sent", "assigned_to"})),
    Surface("desk.undelivered_mail", "analyst", "/desk/mail", fields=("mail_id", "to_addr"), needs=frozenset({"mail"}),
            base=lambda s: {"mail_id": str(s.ids["mail"]), "to_addr": "not an address"}, base_status=422),
    Surface("transfers.nodes", "admin", "/admin/nodes", fields=(*NODE_FIELDS, "supports_get"),
            base=lambda s: {"name": "Leeds PACS", "ae_title": "LEEDS", "host": "10.1.2.3", "port": "104",
                            "role": "remote", "institution": "Leeds Teaching Hospitals"}, base_status=302,
            named=frozenset(NODE_FIELDS), error_id="node-{field}-error"),
    # The node register's edit, (de)activation and delete (issue 14.4); the scene's transfer
    # refers to Leeds PACS, so its delete is refused (409) and the probes reach past it.
    Surface("transfers.edit_node", "admin", "/admin/nodes/{node_id}/edit", path={"node_id": "leeds"},
            fields=(*NODE_FIELDS, "supports_get"), needs=frozenset({"nodes"}),
            base=lambda s: {"name": "Leeds PACS 2", "ae_title": "LEEDS2", "host": "10.1.2.4", "port": "11112",
                            "role": "remote", "institution": "Leeds Teaching Hospitals", "supports_get": "1"},
            base_status=302, named=frozenset(NODE_FIELDS), error_id="node-{field}-error"),
    Surface("transfers.node_active", "admin", "/admin/nodes/{node_id}/active", path={"node_id": "leeds"},
            fields=("active",), needs=frozenset({"nodes"}), base=lambda s: {"active": "0"}, base_status=302),
    Surface("transfers.delete_node", "admin", "/admin/nodes/{node_id}/delete", path={"node_id": "leeds"},
            needs=frozenset({"transfer"})),
    Surface("transfers.echo", "analyst", "/admin/nodes/{node_id}/echo", path={"node_id": "1"}),  # no node: no C-ECHO
    Surface("transfers.pacs_search", "analyst", "/requests/{call_ref}/pacs-search", path=EXPORT_REF,
            fields=("node_id", "date_from", "date_to", "description", "modality", "accession"),
            base=lambda s: {"node_id": ""}, base_status=200),
    Surface("transfers.start", "analyst", "/requests/{call_ref}/transfers", path=EXPORT_REF,
            fields=("study_uid", "source_id", "dest_id", "priority", "report_text"), needs=frozenset({"nodes"}),
            base=lambda s: {"study_uid": STUDY, "source_id": str(s.ids["pacs"]), "dest_id": str(s.ids["leeds"]),
                            "priority": "Standard", "report_text": ""}, base_status=302),
    Surface("transfers.download_to_pacs", "analyst", "/requests/{call_ref}/import", path=CALL_REF,
            fields=("again", "partial"), base=lambda s: {"again": "1"}, base_status=302),
    Surface("transfers.widget", "analyst", "/transfers/{transfer_id}", path={"transfer_id": "transfer"},
            needs=frozenset({"transfer"})),
    Surface("transfers.act", "analyst", "/transfers/{transfer_id}/{action}",
            path={"transfer_id": "transfer", "action": "status"}, needs=frozenset({"transfer"})),  # not an action
    Surface("transfers.arrivals", "analyst", "/desk/arrivals", fields=("study_id", "call_ref"),
            needs=frozenset({"arrival"}),
            base=lambda s: {"study_id": str(s.ids["arrival"]), "call_ref": "IEP-0000-000000"}, base_status=302),
    Surface("trauma.page", "radiologist", "/trauma", form=TraumaForm, fields=("action", "study_uid", "report_study"),
            base=_trauma_base("review"), base_status=200, named_status=422,
            named=frozenset({"s_number", "nhs_number", "no_nhs_reason"})),  # a report may have 20,000
    Surface("trauma.page", "radiologist", "/trauma", form=TraumaForm, fields=("action", "study_uid"),
            base=_trauma_base("filter"), base_status=200, named_status=200, post_only=True, label="filters",
            named=frozenset({"date_from", "date_to", "description", "modality", "accession"})),
    # The CD round (issue 12.5): the scene's CD is collected by the valid POST; the probes
    # then meet "already collected", an unknown reference or a too-long field.
    Surface("collection.collect", "analyst", "/desk/cds/collect", form=CollectForm, query=("site",),
            base=lambda s: {"code": s.call_refs["cd"] + "\n", "site": "LRI"}, base_status=200,
            named=frozenset({"code"}), error_id="code-error"),
    Surface("collection.chart_page", "analyst", "/desk/cds/chart", query=("site", "date")),
    Surface("collection.chart_pdf", "analyst", "/desk/cds/chart.pdf", query=("site", "date")),
    Surface("trauma.track", "radiologist", "/trauma/{call_ref}", path=CALL_REF),
    Surface("cdreview.scan", "analyst", "/requests/{call_ref}/cd-upload/{upload_id}/scan", path=CD_SCANNED,
            needs=frozenset({"cd_scanned"})),
    Surface("cdreview.send_to_pacs", "analyst", "/requests/{call_ref}/cd-upload/{upload_id}/send", path=CD_SCANNED,
            fields=("study_uid", "confirm_patient"), needs=frozenset({"cd_scanned"}),
            base=lambda s: {"study_uid": STUDY, "confirm_patient": "1"}, base_status=422),  # not on the CD
    Surface("cdreview.rescan", "analyst", "/requests/{call_ref}/cd-upload/{upload_id}/rescan", path=CD_SCANNED,
            needs=frozenset({"cd_scanned"})),
    Surface("trauma.status", "radiologist", "/trauma/{call_ref}/status", path=CALL_REF),
    # The CD upload (issue 12.1) reads JSON and raw chunks, not forms: a form post to the
    # manifest is refused (400); the chunk's ids and offset are probed with PUTs (`probe`);
    # tests/test_cd_upload.py sends the hostile manifests themselves.
    Surface("cds.start", "requester", "/requests/{call_ref}/cd-upload", path=CD_REF, fields=("files", "kind"),
            base=lambda s: {"files": "[]"}, base_status=400),
    Surface("cds.chunk", "requester", "/requests/{call_ref}/cd-upload/{upload_id}/files/{file_id}",
            path={**CD_REF, "upload_id": "cd_upload", "file_id": "cd_file"}, query=("offset",),
            needs=frozenset({"cd_upload"})),
    Surface("cds.status", "requester", "/requests/{call_ref}/cd-upload/{upload_id}",
            path={**CD_REF, "upload_id": "cd_upload"}, needs=frozenset({"cd_upload"})),
    Surface("cds.progress", "requester", "/requests/{call_ref}/cd-upload/{upload_id}/progress",
            path={**CD_REF, "upload_id": "cd_upload"}, needs=frozenset({"cd_upload"})),
    # The PAS register upload (issue 14.3): the file is multipart, so a field posted as text
    # is "no file" (422); tests/test_admin_pasup.py sends the hostile files themselves. Apply
    # with no upload of this session's is refused (409) whatever the token and the box say.
    Surface("admin.pas", "admin", "/admin/pas"),
    Surface("admin.pas_upload", "admin", "/admin/pas/upload", fields=("extract",),
            base=lambda s: {"extract": "not a file"}, base_status=422),
    Surface("admin.pas_extract", "admin", "/admin/pas/extract", htmx=True),
    Surface("admin.pas_apply", "admin", "/admin/pas/apply", fields=("token", "confirm"),
            base=lambda s: {"token": "", "confirm": "yes"}, base_status=409),
    # Users and the training register (issue 14.1, 14.7); the scene's analyst is the user changed.
    Surface("admin.users", "admin", "/admin/users", query=("q", "role", "page")),
    Surface("admin.user_new", "admin", "/admin/users/new", form=UserForm,
            base=lambda s: {"name": "Nadia Okafor", "email": f"n.{uuid.uuid4().hex[:8]}@test.uhl", "role": "requester",
                            "phone": "x4411", "department": "Ward 7", "password": "copper-meadow-violin",
                            "must_change_password": "y"}, base_status=302, named=typed_fields(UserForm)),
    Surface("admin.user", "admin", "/admin/users/{user_id}", path=USER),
    Surface("admin.user_role", "admin", "/admin/users/{user_id}/role", path=USER, form=RoleForm,
            base=lambda s: {"role": "analyst"}, base_status=302, named=frozenset({"role"})),
    Surface("admin.user_deactivate", "admin", "/admin/users/{user_id}/deactivate", path=USER,
            base=lambda s: {}, base_status=302),
    Surface("admin.user_reactivate", "admin", "/admin/users/{user_id}/reactivate", path=USER,
            base=lambda s: {}, base_status=302),
    Surface("admin.user_unlock", "admin", "/admin/users/{user_id}/unlock", path=USER, base=lambda s: {},
            base_status=302),
    Surface("admin.user_force_reset", "admin", "/admin/users/{user_id}/reset-password", path=USER,
            base=lambda s: {}, base_status=302),
    Surface("admin.training", "admin", "/admin/training", form=TrainingForm, query=("q", "page", "trainee"),
            base=lambda s: {"trainee": db.session.get_one(User, s.analyst_id).email, "trainer": "Sam Lead",
                            "trained_on": "05/01/2026", "topic": "IEP desk induction"},
            base_status=302, named=typed_fields(TrainingForm)),
    Surface("admin.training_delete", "admin", "/admin/training/{record_id}/delete", path={"record_id": "training"},
            needs=frozenset({"training"}), base=lambda s: {}, base_status=302),
    Surface("admin.training_untrained_csv", "admin", "/admin/training/untrained.csv"),
    # After the valid change the password differs: the probes meet "not your current password"
    # and then the sign-in lock; an over-long value is refused naming its field before either.
    Surface("auth.change_password", "requester", "/account/password", form=PasswordChangeForm,
            base=lambda s: {"current_password": "correct-horse-9", "new_password": "copper-meadow-violin",
                            "confirm_password": "copper-meadow-violin"}, base_status=302,
            named=typed_fields(PasswordChangeForm)),
)


# --- The scene: a register, users, requests, and what some routes need ------------------------


@dataclass
class Scene:
    app: Flask
    client: FlaskClient
    token: str
    ids: dict[str, int]
    call_refs: dict[str, str]
    analyst_id: int

    def sealed(self, picked: trauma.PickedStudy) -> str:
        with self.app.test_request_context():
            return trauma.seal("S1234567", [picked])


def _answers(patient: Any) -> dict[str, object]:
    return {"s_number": patient.s_number, "family_name": "Smith", "given_name": "Margaret", "dob": patient.dob,
            "address_line1": "12 Welford Road", "postcode": "LE2 7AA", "contact_name": "Dr Shah",
            "contact_phone": "0116 258 4000", "contact_email": "shah@uhl-tr.nhs.uk", "institution_name": "Leeds",
            "priority": "Standard", "priority_reason": "Research", "required_by": local_today() + timedelta(days=7),
            "cd_count": 2, "drop_off_site": "LRI", "internal_post_address": "Ward 7",
            "requesting_clinician": "Dr Shah", "consultant": "Dr Ahmed", "department": "Radiology"}


def _sign_in(app: Flask, make_user, role: str | None) -> tuple[FlaskClient, Any]:  # noqa: ANN001
    client = app.test_client()
    user = None
    if role is not None:
        user = make_user(role)
        token = _token(client, "/login")
        response = client.post("/login", data={"csrf_token": token, "email": user.email,
                                               "password": "correct-horse-9"})
        assert response.status_code == 302, response.get_data(as_text=True)
    return client, user


def _token(client: FlaskClient, url: str) -> str:
    match = _CSRF.search(client.get(url).get_data(as_text=True))
    assert match, f"no CSRF token on {url}"
    return match.group(1)


def build_scene(app: Flask, make_user, pas_patients, surface: Surface) -> Scene:  # noqa: ANN001
    client, user = _sign_in(app, make_user, surface.role)
    requester = user if surface.role == "requester" else make_user("requester")
    analyst_id = user.id if user is not None and surface.role == "analyst" else make_user("analyst").id
    patient = pas_patients[0]
    exams = ((date(2026, 1, 2), "CT head", "CHEAD"),)
    if "institution" in surface.needs:  # registered first: the requests below name it
        institution = Institution(name="Leeds", email="imaging@leeds.nhs.uk")
        db.session.add(institution)
        db.session.commit()
    reqs = {kind.value: create_request(RequestValues(kind=kind, patient=patient, answers=_answers(patient),
                                                     exams=exams), requester)
            for kind in (Kind.IMPORT, Kind.EXPORT, Kind.CD)}
    db.session.commit()
    ids = {name: req.id for name, req in reqs.items()}
    if "institution" in surface.needs:
        ids["institution"] = institution.id
    ids["analyst"] = analyst_id  # the user the admin's user pages change (issue 14.1)
    if surface.needs & {"nodes", "transfer"}:
        # Closed ports: nothing here may wait on a DICOM peer.
        pacs = upsert_node("UHLPACSWFM01", "UHLPACS", "127.0.0.1", 9, "local_pacs")
        leeds = upsert_node("Leeds PACS", "LEEDS", "127.0.0.1", 9, "remote")
        db.session.commit()
        ids |= {"pacs": pacs.id, "leeds": leeds.id}
        if "transfer" in surface.needs:
            transfer = transfers.create_transfer(request=reqs["export"], direction=Direction.OUTBOUND,
                                                 priority=Priority.STANDARD, source=pacs, dest=leeds,
                                                 study_uids=[STUDY], user_id=None, actor="test")
            db.session.commit()
            ids["transfer"] = transfer.id
    if "mail" in surface.needs:
        mail = OutboxEmail(request_id=ids["import"], to_addr="gone@uhl-tr.nhs.uk", subject="Your request",
                           body="Done.", status=OutboxStatus.FAILED.value)
        db.session.add(mail)
        db.session.commit()
        ids["mail"] = mail.id
    if "cd_upload" in surface.needs:
        started = cd_uploads.start_upload(reqs["cd"], requester, [{"path": "CD/DICOMDIR", "size": 10}], "folder")
        ids |= {"cd_upload": started.upload.id, "cd_file": started.upload.files[0].id}
    if "arrival" in surface.needs:
        arrival = InboundStudy(study_uid=STUDY, patient_name="SMITH^MARGARET", instances=3)
        db.session.add(arrival)
        db.session.commit()
        ids["arrival"] = arrival.id
    if "training" in surface.needs:
        record = TrainingRecord(user_id=analyst_id, trainer_name="Sam Lead", trained_on=date(2026, 1, 5),
                                topic="IEP desk induction")
        db.session.add(record)
        db.session.commit()
        ids["training"] = record.id
    if "cd_scanned" in surface.needs:
        upload = CdUpload(request_id=ids["cd"], state=CdUploadState.SCANNED,
                          scan_json=ScanResult([], [], 0, False).to_json())
        db.session.add(upload)
        db.session.commit()
        ids["cd_scanned"] = upload.id
    token = _token(client, "/login" if surface.role is None else "/requests/new/import")
    return Scene(app=app, client=client, token=token, ids=ids,
                 call_refs={name: req.call_ref for name, req in reqs.items()}, analyst_id=analyst_id)


# --- Sending the probes -----------------------------------------------------------------------


def _url(surface: Surface, scene: Scene, **crafted: str) -> str:
    """The surface's URL with each parameter crafted, or the scene's row (a call reference
    by kind, an id by name), or else the literal the surface gives."""
    values: dict[str, str] = {}
    for name, source in surface.path.items():
        if name in crafted:
            values[name] = crafted[name]
        elif name == "call_ref":
            values[name] = scene.call_refs[source]
        else:
            values[name] = str(scene.ids.get(source, source))
    return surface.url.format(**values)


@dataclass
class Findings:
    sent: int = 0
    failures: list[str] = field(default_factory=list)

    def check(self, what: str, response, surface: Surface, probed: str | None = None,  # noqa: ANN001
              value: str | None = None) -> None:
        self.sent += 1
        if response.status_code >= 500:
            self.failures.append(f"{what}: {response.status_code}")
            return
        if value is LONG and probed in surface.named:
            body = response.get_data(as_text=True)
            if surface.named_status is not None and response.status_code != surface.named_status:
                self.failures.append(f"{what}: {response.status_code}, not {surface.named_status}")
            elif f'id="{surface.error_id.format(field=probed)}"' not in body:
                self.failures.append(f"{what}: {response.status_code} without an error naming {probed}")
            elif _shown_back(surface, probed) and LONG not in body and LONG.upper() not in body:
                self.failures.append(f"{what}: the typed value was not kept for correcting")


def _shown_back(surface: Surface, name: str) -> bool:
    """A typed field comes back as typed; a choice or a password does not."""
    if not surface.shows_back:
        return False
    if surface.form is None:
        return name != "role"
    unbound = dict(inspect.getmembers(surface.form, lambda v: isinstance(v, UnboundField))).get(name)
    return unbound is None or not issubclass(unbound.field_class, (PasswordField, SelectFieldBase))


def _posts(surface: Surface, scene: Scene, part: int) -> Iterable[tuple[str, str | None, str | None, dict[str, str]]]:
    """(what, field, value, data) for every POST probe of `surface` in `part` (of surface.parts)."""
    base = surface.base(scene) if surface.base else {}
    fields = (*surface.posted, "csrf_token")[part::surface.parts]
    for name in fields:
        values = {"action": (*CRAFTED, *ACTIONS), "csrf_token": (NUL, LONG)}.get(name, CRAFTED)
        for value in values:
            fresh = surface.base(scene) if surface.base else {}
            yield f"POST {surface.url} {name}={value[:24]!r}", name, value, {**fresh, name: value}
    if surface.cursors and part == 0:
        for sort in SORTS:
            for cursor in CURSORS:
                yield (f"POST {surface.url} sort={sort} page_cursor={cursor}", None, None,
                       {**base, "sort": sort, "direction": "asc", "page_cursor": cursor, "assigned": UNKNOWN_ID})


def probe(surface: Surface, scene: Scene, methods: set[str], part: int = 0) -> Findings:
    client = scene.client
    headers = {"HX-Request": "true"} if surface.htmx else {}
    findings = Findings()
    # URL parameters: the scene's value for the others, one crafted at a time.
    for name in surface.path if part == 0 else ():
        for value in (*CRAFTED, UNKNOWN_ID, "%", "../../etc/passwd"):
            url = _url(surface, scene, **{name: value})
            method = next((m for m in ("GET", "POST", "PUT") if m in methods), "GET")
            data: Any = {"csrf_token": scene.token} if method == "POST" else None
            put_headers = {**headers, "X-CSRFToken": scene.token} if method == "PUT" else headers
            findings.check(f"{method} {url[:80]!r}", client.open(url, method=method, data=data if method != "PUT"
                                                                 else b"x", headers=put_headers), surface)
    url = _url(surface, scene)
    if "GET" in methods and not surface.post_only and part == 0:
        # A route that parses no query string still gets one it does not expect.
        for name, values in ([(name, CRAFTED) for name in surface.query] or [("unexpected", (NUL, LONG))]):
            for value in values:
                findings.check(f"GET {url}?{name}={value[:24]!r}",
                               client.get(url, query_string={name: value}, headers=headers), surface)
    if "PUT" in methods and part == 0:
        # A raw body (a CD chunk): every query parameter crafted, with the page's token.
        for name in surface.query:
            for value in CRAFTED:
                findings.check(f"PUT {url}?{name}={value[:24]!r}",
                               client.put(url, query_string={name: value}, data=b"x",
                                          headers={**headers, "X-CSRFToken": scene.token}), surface)
    if "POST" not in methods:
        return findings
    if surface.base is not None and surface.base_status is not None:
        response = client.post(url, data={**surface.base(scene), "csrf_token": scene.token}, headers=headers)
        assert response.status_code == surface.base_status, (
            f"the valid POST to {url} answered {response.status_code}: the probes would not get past the checks\n"
            + response.get_data(as_text=True)[:3000])
    for what, name, value, data in _posts(surface, scene, part):
        if name != "csrf_token":
            data.setdefault("csrf_token", scene.token)
        findings.check(what, client.post(url, data=data, headers=headers), surface, name, value)
    return findings


def _rule_methods(app: Flask, endpoint: str) -> set[str]:
    methods: set[str] = set()
    for rule in app.url_map.iter_rules(endpoint):
        methods |= set(rule.methods or ()) - {"HEAD", "OPTIONS"}
    return methods


def _cases() -> Iterable[Any]:
    for s in SURFACES:
        for part in range(s.parts):
            name = s.endpoint + (f"-{s.label}" if s.label else "") + (f"-{part + 1}of{s.parts}" if s.parts > 1 else "")
            # Several seconds each: started first (conftest), not left to hold up the end of a run.
            yield pytest.param(s, part, id=name, marks=[pytest.mark.slow] if s.parts > 1 else [])


@pytest.mark.parametrize(("surface", "part"), _cases())
def test_crafted_input_never_gives_a_5xx(app, make_user, pas_patients, surface, part):
    scene = build_scene(app, make_user, pas_patients, surface)
    findings = probe(surface, scene, _rule_methods(app, surface.endpoint), part)
    assert findings.sent > 0
    assert not findings.failures, f"{len(findings.failures)} of {findings.sent} probes:\n" + "\n".join(
        findings.failures)


# --- The list is the app's ---------------------------------------------------------------------

_READS = re.compile(r"""request\.(?:form|args)(?:\.get(?:list)?\(\s*|\[)"([^"]+)"""
                    r"""|"([^"]+)"\s+in\s+request\.(?:form|args)""")


def _leaf_forms() -> set[type[FlaskForm]]:
    found: set[type[FlaskForm]] = set()
    pending = list(FlaskForm.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("app.") and not cls.__subclasses__():
            found.add(cls)
    return found


def test_every_route_form_and_parameter_is_probed(app):
    listed = {s.endpoint for s in SURFACES}
    served = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert served - listed == set(), f"routes not probed: add them to SURFACES: {sorted(served - listed)}"
    assert listed - served == set(), f"SURFACES lists routes the app does not serve: {sorted(listed - served)}"
    for rule in app.url_map.iter_rules():
        params = set(rule.arguments)
        probed = {name for s in SURFACES if s.endpoint == rule.endpoint for name in s.path}
        assert params <= probed, f"{rule.rule}: URL parameters not probed: {sorted(params - probed)}"
    forms = {s.form for s in SURFACES if s.form is not None}
    assert _leaf_forms() - forms == set(), f"forms not probed: add them to SURFACES: {_leaf_forms() - forms}"
    by_module: dict[str, set[str]] = {}
    for s in SURFACES:
        module = app.view_functions[s.endpoint].__module__
        by_module.setdefault(module, set()).update(s.posted, s.query)
    for module, names in by_module.items():
        source = inspect.getsource(sys.modules[module])
        read = {a or b for a, b in _READS.findall(source)}
        assert read <= names, f"{module} reads {sorted(read - names)} from the request: probe them in SURFACES"


# --- Each typed field fits the column it is saved in -------------------------------------------

# Form -> the model its fields are saved to (same names). The 10,000-character probes above
# catch a field with no bound at all; this catches a bound larger than the column.
SAVED_IN = {ImportForm: Request, ExportForm: Request, CDForm: Request, ExamLineForm: ExamLine, EditForm: Request,
            TraumaForm: Request, MessageForm: Message, InstitutionForm: Institution,
            UserForm: User, RoleForm: User, PasswordChangeForm: User, TrainingForm: TrainingRecord}
# Fields checked by a rule that leaves them shorter than the raw input may be.
CLEANED = {
    "s_number": "clean_s_number keeps S and 7 digits",
    "nhs_number": "clean_nhs_number keeps the 10 digits (spaces and dashes typed around them)",
}


def test_every_saved_text_field_is_bounded_by_its_column():
    # These only look things up (CollectForm: a call reference; its site is one of a list;
    # PatientLookupForm: an S number in the PAS register; AuditFilterForm, PatientForm: the audit).
    assert set(SAVED_IN) >= {f for f in _leaf_forms()
                             if f not in (LoginForm, FilterForm, CollectForm, PatientLookupForm, AuditFilterForm,
                                          PatientForm)}, (
        "a form that saves what is typed: say in SAVED_IN which model it saves to")
    too_long = []
    for form_class, model in SAVED_IN.items():
        columns = model.__table__.c
        for name, unbound in inspect.getmembers(form_class, lambda v: isinstance(v, UnboundField)):
            typed = issubclass(unbound.field_class, StringField) and not issubclass(unbound.field_class, HiddenField)
            if not typed or name not in columns or name in CLEANED or not isinstance(columns[name].type, sa.String):
                continue  # choices and hidden keys are checked against their lists and patterns
            limit = columns[name].type.length
            bounds = [v.max for v in unbound.kwargs.get("validators", ()) if isinstance(v, Length) and v.max >= 0]
            if limit is not None and (not bounds or min(bounds) > limit):
                too_long.append(f"{form_class.__name__}.{name}: {bounds or 'no Length'} for a column of {limit}")
    assert not too_long, "fields longer than their columns (PostgreSQL refuses them at the commit):\n" + "\n".join(
        too_long)
