"""The institution register (issue 14.2): list and search, add, edit, deactivate, delete.

An institution is a hospital the desk exchanges images with: its name (what the request
forms offer, guideline Appendix 2 and 3), its site, the contact its notices go to, and the
DICOM node(s) it is reached by. That last is the nodes' own link (`DicomNode.institution`,
set from the node register too): this page shows and sets it, it keeps no second one.

An institution that requests or nodes refer to is deactivated, never deleted: a deactivated
one is no longer offered on the forms, and what names it keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from flask import abort, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from sqlalchemy.exc import IntegrityError
from wtforms import EmailField, SelectMultipleField, StringField, widgets
from wtforms.validators import DataRequired, Email, Length, Optional, ValidationError

from app import audit, htmx
from app.admin import bp
from app.auth.guard import roles_required
from app.auth.models import Role
from app.extensions import db
from app.requests.models import Institution, Request
from app.transfers.models import DicomNode, NodeRole

SHOWN = 200  # rows on the list at most; the count says how many match, the search narrows
SEARCH_MAX = 100  # characters of a search that are used
# The roles of the nodes an institution is reached by: never our own PACS.
_REACHING_ROLES = (NodeRole.REMOTE.value, NodeRole.GATEWAY.value)


def _strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


class InstitutionForm(FlaskForm):
    """One institution's details, and the nodes it is reached by (ticked from the register)."""

    name = StringField(
        "Name", filters=[_strip],
        validators=[DataRequired("Give the institution's name in full, e.g. Nottingham University Hospitals NHS "
                                 "Trust."), Length(max=160, message="The name can be at most %(max)d characters.")],
    )
    site = StringField(
        "Site (optional)", filters=[_strip],
        validators=[Optional(), Length(max=120, message="The site can be at most %(max)d characters.")],
    )
    email = EmailField(
        "Contact e-mail for notifications (optional)", filters=[_strip],
        validators=[Optional(), Length(max=254, message="An e-mail address has at most %(max)d characters."),
                    Email("Enter a valid e-mail address, e.g. imaging.exchange@nuh.nhs.uk.")],
    )
    nodes = SelectMultipleField(
        "DICOM node(s) it is reached by", choices=[], validate_choice=False,
        widget=widgets.ListWidget(prefix_label=False), option_widget=widgets.CheckboxInput(),
    )

    def __init__(self, institution: Institution | None = None, **kwargs: object) -> None:
        super().__init__(obj=institution, **kwargs)
        self.institution = institution
        self.offered = _offered_nodes(institution)
        self.nodes.choices = [(str(n.id), _node_label(n, institution)) for n in self.offered]
        if institution is not None and not self.is_submitted():
            self.nodes.data = [str(n.id) for n in self.offered if n.institution_id == institution.id]

    def validate_name(self, field: StringField) -> None:
        other = db.session.scalar(sa.select(Institution).where(sa.func.lower(Institution.name) == field.data.lower()))
        if other is not None and other is not self.institution:
            state = "" if other.active else " (deactivated: reactivate it instead)"
            raise ValidationError(f"Another institution is already named {other.name}{state}.")

    def validate_nodes(self, field: SelectMultipleField) -> None:
        offered = {str(n.id) for n in self.offered}
        if any(value not in offered for value in field.data or ()):
            raise ValidationError("Tick nodes from the list: one of those sent is not an active node of the "
                                  "register.")


def _offered_nodes(institution: Institution | None) -> list[DicomNode]:
    """The active remote and gateway nodes, and any node that reaches `institution` now
    (deactivated or not), so that saving the page never unlinks one silently."""
    linked = DicomNode.institution_id == institution.id if institution is not None else sa.false()
    return list(db.session.scalars(
        sa.select(DicomNode).where(sa.or_(sa.and_(DicomNode.active, DicomNode.role.in_(_REACHING_ROLES)), linked))
        .options(sa.orm.selectinload(DicomNode.institution)).order_by(DicomNode.name)))


def _node_label(node: DicomNode, institution: Institution | None) -> str:
    label = f"{node.name} ({node.ae_title}@{node.host}:{node.port})"
    if not node.active:
        label += ", deactivated"
    if node.institution is not None and node.institution is not institution:
        label += f", now reaching {node.institution.name}: ticking it moves it here"
    return label


# --- The work, audited; the views commit -------------------------------------------------------


def save_institution(form: InstitutionForm) -> Institution:
    """Add or change the institution from a validated form, and set which nodes reach it;
    one audit row names what changed. Never commits."""
    inst = form.institution
    fields = {"name": form.name.data, "site": form.site.data or "", "email": form.email.data or ""}
    if inst is None:
        inst = Institution(**fields)
        db.session.add(inst)
        db.session.flush()
        changes = [f"{key} {value}" for key, value in fields.items() if value]
        verb = "added"
    else:
        changes = [f"{key} {getattr(inst, key) or '-'} -> {value or '-'}"
                   for key, value in fields.items() if getattr(inst, key) != value]
        for key, value in fields.items():
            setattr(inst, key, value)
        verb = "changed"
    wanted = set(form.nodes.data or ())
    for node in form.offered:
        if str(node.id) in wanted and node.institution_id != inst.id:
            was = f" (from {node.institution.name})" if node.institution is not None else ""
            node.institution = inst
            changes.append(f"node {node.name} reaches it{was}")
        elif str(node.id) not in wanted and node.institution_id == inst.id:
            node.institution = None
            changes.append(f"node {node.name} no longer")
    audit.record(audit.Action.INSTITUTION_CHANGED,
                 detail=f"institution {inst.id} {verb}: " + ("; ".join(changes) if changes else "nothing"))
    return inst


@dataclass(frozen=True)
class Uses:
    """What refers to an institution: it may be deleted only when nothing does."""

    requests: int
    nodes: int

    def __bool__(self) -> bool:
        return bool(self.requests or self.nodes)

    def __str__(self) -> str:
        said = [f"{self.requests} request{'s' if self.requests != 1 else ''}" if self.requests else "",
                f"{self.nodes} DICOM node{'s' if self.nodes != 1 else ''}" if self.nodes else ""]
        return " and ".join(s for s in said if s)

    @property
    def verb(self) -> str:
        return "refers" if self.requests + self.nodes == 1 else "refer"


def uses_of(inst: Institution) -> Uses:
    count = sa.select(sa.func.count())
    return Uses(
        requests=db.session.scalar(count.select_from(Request).where(Request.institution_id == inst.id)) or 0,
        nodes=db.session.scalar(count.select_from(DicomNode).where(DicomNode.institution_id == inst.id)) or 0,
    )


def set_institution_active(inst: Institution, active: bool) -> None:
    """Deactivate (no longer offered on the forms) or reactivate, audited. Never commits."""
    if inst.active != active:
        inst.active = active
        audit.record(audit.Action.INSTITUTION_CHANGED,
                     detail=f"institution {inst.id} {inst.name} {'reactivated' if active else 'deactivated'}")


def delete_institution_if_unused(inst: Institution) -> Uses:
    """Delete an institution nothing refers to, audited; else keep it and say what refers
    to it. Never commits."""
    uses = uses_of(inst)
    if not uses:
        audit.record(audit.Action.INSTITUTION_CHANGED, detail=f"institution {inst.id} {inst.name} deleted")
        db.session.delete(inst)
    return uses


def _search(q: str) -> sa.ColumnElement[bool]:
    pattern = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return sa.or_(*(sa.func.lower(column).like(pattern, escape="\\")
                    for column in (Institution.name, Institution.site, Institution.email)))


# --- Views ---------------------------------------------------------------------------------------


def _institution(institution_id: int) -> Institution:
    """The institution with that id; aborts 404 when there is none."""
    return db.session.get(Institution, institution_id) or abort(404)


@bp.route("/institutions")
@roles_required(Role.ADMIN)
def institutions():
    """The register, active first, searched by name, site or e-mail as one types."""
    q = (request.args.get("q") or "").strip()[:SEARCH_MAX]
    where = _search(q) if q else sa.true()
    total = db.session.scalar(sa.select(sa.func.count()).select_from(Institution).where(where)) or 0
    rows = list(db.session.scalars(sa.select(Institution).where(where)
                                   .order_by(Institution.active.desc(), Institution.name).limit(SHOWN)))
    ids = [i.id for i in rows]
    reaching: dict[int, list[DicomNode]] = {}
    for node in db.session.scalars(sa.select(DicomNode).where(DicomNode.institution_id.in_(ids))
                                   .order_by(DicomNode.name)):
        reaching.setdefault(node.institution_id or 0, []).append(node)
    requests = dict(db.session.execute(
        sa.select(Request.institution_id, sa.func.count()).where(Request.institution_id.in_(ids))
        .group_by(Request.institution_id)).tuples().all())
    return htmx.render("admin/institutions.html", "admin/_institution_rows.html", q=q, rows=rows, total=total,
                       reaching=reaching, requests=requests, shown=SHOWN)


@bp.route("/institutions/new", methods=["GET", "POST"])
@roles_required(Role.ADMIN)
def new_institution():
    """Register an institution."""
    return _edit(None)


@bp.route("/institutions/<int:institution_id>", methods=["GET", "POST"])
@roles_required(Role.ADMIN)
def edit_institution(institution_id: int):
    """One institution's details and the nodes it is reached by, prefilled."""
    return _edit(_institution(institution_id))


def _edit(inst: Institution | None):  # noqa: ANN202 - a view's answer
    form = InstitutionForm(inst)
    status = 200
    if form.validate_on_submit():
        try:
            saved = save_institution(form)
            db.session.commit()
        except IntegrityError:  # the same name saved meanwhile, in another tab
            db.session.rollback()
            form.name.errors = [f"Another institution is already named {form.name.data}."]
        else:
            flash(f"Institution {saved.name} saved.", "success")
            return redirect(url_for("admin.institutions", q=saved.name))
    if form.is_submitted():
        status = 422
    uses = uses_of(inst) if inst is not None else None
    return render_template("admin/institution_edit.html", form=form, inst=inst, uses=uses), status


@bp.route("/institutions/<int:institution_id>/active", methods=["POST"])
@roles_required(Role.ADMIN)
def institution_active(institution_id: int):
    """Deactivate an institution (no longer offered on the forms) or reactivate it."""
    inst = _institution(institution_id)
    wanted = request.form.get("active")
    if wanted not in ("0", "1"):
        abort(400, description="Say whether the institution is to be active (1) or not (0).")
    set_institution_active(inst, wanted == "1")
    db.session.commit()
    flash(f"Institution {inst.name} reactivated." if inst.active else f"Institution {inst.name} deactivated: the "
          "request forms no longer offer it; the requests that name it keep it.", "success")
    return redirect(url_for("admin.edit_institution", institution_id=inst.id))


@bp.route("/institutions/<int:institution_id>/delete", methods=["GET", "POST"])
@roles_required(Role.ADMIN)
def delete_institution(institution_id: int):
    """Delete an institution nothing refers to, after a confirmation page; one that
    requests or nodes refer to is refused (deactivate it instead)."""
    inst = _institution(institution_id)
    if request.method == "POST":
        name = inst.name
        uses = delete_institution_if_unused(inst)
        if not uses:
            db.session.commit()
            flash(f"Institution {name} deleted.", "success")
            return redirect(url_for("admin.institutions"))
        return render_template("admin/institution_delete.html", inst=inst, uses=uses), 409
    return render_template("admin/institution_delete.html", inst=inst, uses=uses_of(inst))
