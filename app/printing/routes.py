"""PDF downloads: the completed form (Appendix 2, 3, 6) and the CD labels (Appendix 5)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import segno
from flask import Blueprint, Response, abort
from markupsafe import Markup

from app import audit
from app.extensions import db
from app.printing.collections import DROP_OFF_SITES, next_collection_date
from app.printing.render import render_pdf
from app.requests.access import visible_request
from app.requests.models import Request
from app.requests.statuses import Kind, Priority
from app.timeutil import local_now, local_today

bp = Blueprint("printing", __name__)


FORM_TEMPLATES = {
    Kind.IMPORT: "pdf/form_import.html",
    Kind.EXPORT: "pdf/form_export.html",
    Kind.CD: "pdf/form_cd.html",
}
LABELS_PER_PAGE = 8  # two columns, four rows on A4


# Plain values for the print templates (STYLE habit 8): no ORM object, so a template
# can neither lazy-load a relationship nor reach anything the form does not show.
@dataclass(frozen=True)
class PrintedExam:
    exam_date: date
    description: str
    exam_code: str


@dataclass(frozen=True)
class PrintedRequest:
    call_ref: str
    kind: str
    kind_label: str
    appendix: str
    submitted_at: datetime
    requester_name: str
    priority: str
    priority_reason: str
    required_by: date | None
    # Patient.
    patient_name: str
    s_number: str
    nhs_number: str
    dob: date
    gender: str
    address_lines: tuple[str, ...]
    # UHL staff contact.
    contact_name: str
    contact_phone: str
    contact_email: str
    comments: str
    # Import / export.
    institution_name: str
    requesting_clinician: str
    consultant: str
    department: str
    site_contact_name: str
    site_contact_position: str
    site_contact_phone: str
    site_contact_email: str
    # CD import.
    cd_count: int
    internal_post_address: str
    drop_off_site: str
    drop_off_name: str
    # For use by MBP.
    mbp_call_ref: str
    imaging_uploaded_by: str
    images_fixed_up_by: str
    date_imaging_sent: date | None
    exams: tuple[PrintedExam, ...]

    @classmethod
    def of(cls, req: Request) -> PrintedRequest:
        address = (req.address_line1, req.address_line2, req.town, req.county, req.postcode)
        return cls(
            call_ref=req.call_ref,
            kind=req.kind.value,
            kind_label=req.kind.label,
            appendix=req.kind.appendix,
            submitted_at=req.created_at,
            requester_name=req.requester.name,
            priority=req.priority.value,
            priority_reason=req.priority_reason,
            required_by=req.required_by,
            patient_name=req.patient_display_name,
            s_number=req.s_number,
            nhs_number=req.nhs_number,
            dob=req.dob,
            gender=req.gender,
            address_lines=tuple(part for part in address if part),
            contact_name=req.contact_name,
            contact_phone=req.contact_phone,
            contact_email=req.contact_email,
            comments=req.comments,
            institution_name=req.institution_name,
            requesting_clinician=req.requesting_clinician,
            consultant=req.consultant,
            department=req.department,
            site_contact_name=req.site_contact_name,
            site_contact_position=req.site_contact_position,
            site_contact_phone=req.site_contact_phone,
            site_contact_email=req.site_contact_email,
            cd_count=req.cd_count or 0,
            internal_post_address=req.internal_post_address,
            drop_off_site=req.drop_off_site,
            drop_off_name=DROP_OFF_SITES.get(req.drop_off_site, req.drop_off_site),
            mbp_call_ref=req.mbp_call_ref,
            imaging_uploaded_by=req.imaging_uploaded_by,
            images_fixed_up_by=req.images_fixed_up_by,
            date_imaging_sent=req.date_imaging_sent,
            exams=tuple(PrintedExam(e.exam_date, e.description, e.exam_code) for e in req.exams),
        )


@dataclass(frozen=True)
class Label:
    heading: str  # "Envelope – 2 CDs" or "CD 1 of 2"
    envelope: bool


def cd_labels(cd_count: int) -> list[Label]:
    """The envelope label first, then one label per CD."""
    envelope = Label(f"Envelope – {cd_count} CD{'s' if cd_count != 1 else ''}", envelope=True)
    return [envelope] + [Label(f"CD {n} of {cd_count}", envelope=False) for n in range(1, cd_count + 1)]


def label_pages(labels: list[Label]) -> list[list[list[Label | None]]]:
    """Labels laid out as pages of rows of two; a short last row is padded with None."""
    rows = [labels[i : i + 2] for i in range(0, len(labels), 2)]
    padded: list[list[Label | None]] = [row + [None] * (2 - len(row)) for row in rows]
    per_page = LABELS_PER_PAGE // 2
    return [padded[i : i + per_page] for i in range(0, len(padded), per_page)]


def qr_svg(text: str) -> Markup:
    """A QR code of `text` as inline SVG (vector: sharp at any printer resolution).

    `make_qr`, not `make`: segno picks a Micro QR for short text, which phone cameras
    and most desk scanners do not read. Markup is safe here: segno draws the modules as
    path data and writes none of `text` into the SVG.
    """
    return Markup(segno.make_qr(text, error="m").svg_inline(border=4, omitsize=True))  # noqa: S704 - segno's SVG holds path data only, none of `text`


def _pdf_response(pdf: bytes, call_ref: str, name: str) -> Response:
    response = Response(pdf, mimetype="application/pdf")
    # The call reference only: no patient data in file names (PITFALLS "Web").
    response.headers["Content-Disposition"] = f'inline; filename="{call_ref}-{name}"'
    response.headers["Cache-Control"] = "no-store"
    # The site-wide CSP has object-src 'none', which makes Chrome's built-in viewer show
    # "This content is blocked" for the PDF itself (crbug.com/271452: it renders through
    # an internal <embed>). A PDF served with nosniff is never run as HTML; keep only the
    # framing rule. The site-wide hook uses setdefault, so this one stands.
    response.headers["Content-Security-Policy"] = "frame-ancestors 'self'"
    return response


def _audited(req: Request, name: str) -> None:
    # After rendering: a download that failed is not recorded as one.
    audit.record(audit.Action.DOWNLOAD_PDF, request_id=req.id, detail=f"{req.call_ref} {name}")
    db.session.commit()


@bp.route("/requests/<call_ref>/form.pdf")
def form_pdf(call_ref: str):
    """The completed form, laid out like its appendix (aborts 404 for a kind without one)."""
    req = visible_request(call_ref)
    template = FORM_TEMPLATES.get(req.kind)
    if template is None:
        abort(404)
    pdf = render_pdf(
        template,
        r=PrintedRequest.of(req),
        blue_light=Priority.BLUE_LIGHT.value,
        printed_at=local_now(),
    )
    _audited(req, "form.pdf")
    return _pdf_response(pdf, req.call_ref, "form.pdf")


@bp.route("/requests/<call_ref>/label.pdf")
def label_pdf(call_ref: str):
    """CD envelope label and one label per CD (CD requests only, else 404)."""
    req = visible_request(call_ref)
    if req.kind != Kind.CD:
        abort(404)
    printed = PrintedRequest.of(req)
    pdf = render_pdf(
        "pdf/labels.html",
        r=printed,
        pages=label_pages(cd_labels(printed.cd_count)),
        qr=qr_svg(printed.call_ref),
        next_collection=next_collection_date(local_today()),
    )
    _audited(req, "label.pdf")
    return _pdf_response(pdf, req.call_ref, "label.pdf")
