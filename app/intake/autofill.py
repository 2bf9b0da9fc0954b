"""The request forms' S number autofill (issue 13.8): typing an S number fills the patient's
details from the PAS register, read-only, so what the register holds is shown, not retyped.

htmx posts the form when the S number changes; the answer is the details fragment (swapped
in place) and the status line (out of band, into the form's live region, so a screen reader
hears it). Without JavaScript nothing calls this: the form is typed and checked against the
register on submit, as before. The look-up itself (audit, per-user limit) is
app/patients/lookup.py; the submit takes the register's values (`forms.take_register`).
"""

from __future__ import annotations

from flask import Blueprint, Response, make_response, render_template
from flask_login import current_user

from app import htmx
from app.extensions import db
from app.intake.forms import PatientLookupForm, take_register
from app.patients.lookup import look_up

bp = Blueprint("autofill", __name__)


@bp.route("/requests/new/patient", methods=["POST"])
def patient() -> Response:
    """The patient details for the S number typed: the register's, read-only, when it has them."""
    form = PatientLookupForm()
    result = look_up(form.s_number.data or "", current_user.id)
    if result.patient is not None:
        take_register(form, result.patient)
    elif form.pas_from.data:
        # The details on the page are the register's for another S number: not "typed".
        form.clear_details()
    body = render_template("intake/_patient_details.html", form=form, pas=result) + render_template(
        "intake/_pas_status.html", pas=result, oob=True)
    db.session.commit()  # the look-up's audit row; after rendering: an answer that fails leaves none
    return htmx.vary(make_response(body))
