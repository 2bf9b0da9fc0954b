"""The queue's filter form and the inline edit form."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import HiddenField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Length, Optional, ValidationError

from app.intake.forms import UKDateField
from app.requests.statuses import Kind, Priority, Status
from app.workflow.machine import DECLINE_REASONS


class FilterForm(FlaskForm):
    """Search and filters; POSTed, so no patient detail lands in a URL or a log."""

    class Meta:
        csrf = False  # read-only search; the page's forms that change things carry tokens

    tab = HiddenField(default="action")
    sort = HiddenField(default="created")
    direction = HiddenField(default="desc")
    cursor = HiddenField()
    call_ref = StringField("Call reference", validators=[Optional(), Length(max=20)])
    patient_name = StringField("Patient (family name[, given])", validators=[Optional(), Length(max=80)])
    nhs_number = StringField("NHS number", validators=[Optional(), Length(max=20)])
    s_number = StringField("S number", validators=[Optional(), Length(max=10)])
    institution = StringField("Institution", validators=[Optional(), Length(max=80)])
    kind = SelectField("Type", choices=[SelectChoice("", "Any")] + [SelectChoice(k.value, k.label) for k in Kind])
    status = SelectField("Status", choices=[SelectChoice("", "Any")] + [SelectChoice(s.value) for s in Status])
    priority = SelectField("Priority", choices=[SelectChoice("", "Any")] + [SelectChoice(p.value) for p in Priority])
    date_from = UKDateField("Submitted from", validators=[Optional()])
    date_to = UKDateField("Submitted to", validators=[Optional()])
    assigned = SelectField("Assigned to", choices=[], validate_choice=False)


class EditForm(FlaskForm):
    """Status, assignee and the "For use by MBP" fields of one request."""

    version = HiddenField()
    status = SelectField("Status", choices=[], validate_choice=False)
    decline_reason = SelectField(
        "Reason for decline (guideline 2.5)",
        choices=[SelectChoice("", "—")] + [SelectChoice(k, v) for k, v in DECLINE_REASONS.items()],
        validate_choice=False,  # the status machine checks it, with a clearer message
    )
    note = TextAreaField(
        "Note (for Awaiting Details: what is missing; for a decline: their words)",
        validators=[Length(max=2000)],
    )
    assigned_to = SelectField("Assigned to", choices=[], validate_choice=False)  # validate_assigned_to says why
    mbp_call_ref = StringField("NTT (Offshore team) call ref", validators=[Length(max=40)])
    imaging_uploaded_by = StringField("Imaging uploaded by", validators=[Length(max=120)])
    images_fixed_up_by = StringField("Images 'fixed up' by", validators=[Length(max=120)])
    date_imaging_sent = UKDateField("Date imaging sent", validators=[Optional()])

    def validate_assigned_to(self, field: SelectField) -> None:
        # Only someone listed: an unknown id would break the foreign key at the commit
        # (a 500 on PostgreSQL), and WTForms' own check says only "Not a valid choice".
        if (field.data or "") not in {str(choice[0]) for choice in field.choices}:  # not posted: nobody, as before
            raise ValidationError("Choose someone from the list: that person cannot be assigned requests.")
