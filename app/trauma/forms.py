"""The trauma screen's one form: the patient (Appendix 4 steps 8-10), the study list's
filters (step 11), the report (step 13) and the screen's hidden state.

Every step posts the whole form and every step is checked again on the server: the
patient against the PAS register, the ticked studies against the signed list the search
made (`service.unseal`), the report's check box against the report shown.
"""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField, StringField, TextAreaField
from wtforms.validators import Length, Optional

from app.intake.forms import UKDateField, _apply, _required
from app.patients.models import Patient
from app.requests import validators as rules
from app.transfers.search import StudyFilters
from app.trauma.service import MAX_REPORT_CHARS, PickedStudy, patient_by_s_number, unseal


class TraumaForm(FlaskForm):
    s_number = StringField(
        "Patient ID (RWES / S number)",
        validators=[_required("Enter the patient's S number (the RWES number).")],
        # Shown only on the first step; an error summary above it takes the focus first.
        render_kw={"autocomplete": "off", "spellcheck": "false", "autofocus": True},
    )
    nhs_number = StringField(
        "NHS number", validators=[Length(max=20)],
        render_kw={"autocomplete": "off", "inputmode": "numeric", "spellcheck": "false"},
    )
    no_nhs_reason = StringField(
        "Reason there is no NHS number", validators=[Length(max=200)],
        render_kw={"autocomplete": "off", "placeholder": "e.g. unidentified trauma patient, NHS number not yet issued"},
    )
    # Step 11: narrow the study list.
    date_from = UKDateField("Exam date from", validators=[Optional()])
    date_to = UKDateField("Exam date to", validators=[Optional()])
    description = StringField("Body part or study description", validators=[Length(max=64)])
    modality = StringField("Modality", validators=[Length(max=16)], render_kw={"placeholder": "e.g. CT"})
    accession = StringField("Accession number", validators=[Length(max=16)])
    # Step 13: the report, pasted from CRIS or eRadCockpit, and its check.
    report_text = TextAreaField(
        "Report (optional): paste it from CRIS or eRadCockpit",
        validators=[Length(max=MAX_REPORT_CHARS, message=f"The report can be at most {MAX_REPORT_CHARS} characters.")],
    )
    report_checked = BooleanField("I have read the report above: it is the right report, for this patient")
    send_again = BooleanField("Send them again: the earlier transfer is not enough")
    # The screen's state between steps.
    patient_checked = HiddenField()
    studies_token = HiddenField()
    submission_key = HiddenField()

    patient: Patient | None = None

    def check_patient(self) -> bool:
        """Steps 8-9: the S number is on the register; the NHS number, when given, is the
        register's; without one, the radiologist says why. Sets `patient`."""
        self.s_number.validate(self)
        self.nhs_number.validate(self)
        self.no_nhs_reason.validate(self)
        if self.s_number.errors:
            return False
        _apply(rules.clean_s_number, self.s_number)
        nhs_typed = (self.nhs_number.data or "").strip()
        if nhs_typed:
            _apply(rules.clean_nhs_number, self.nhs_number)
        else:
            self.nhs_number.data = ""
            if not (self.no_nhs_reason.data or "").strip():
                self.no_nhs_reason.errors.append(
                    "Enter the patient's NHS number, or say why there is none (Appendix 4 step 9).")
        if self.s_number.errors or self.nhs_number.errors:
            return False
        patient = patient_by_s_number(self.s_number.data)
        if patient is None:
            self.s_number.errors.append(
                "No patient with this S number is registered on PatientCentre/HISS. Check the number on RWES.")
            return False
        if self.nhs_number.data and self.nhs_number.data != (patient.nhs_number or self.nhs_number.data):
            self.nhs_number.errors.append(
                "This NHS number is not the one registered for this S number. Check both on RWES.")
            return False
        self.patient = patient
        return not self.no_nhs_reason.errors

    def filters(self) -> StudyFilters:
        for field in (self.date_from, self.date_to, self.description, self.modality, self.accession):
            field.validate(self)
        if self.date_from.data and self.date_to.data and self.date_from.data > self.date_to.data:
            self.date_to.errors.append("“Exam date to” is before “Exam date from”.")

        def ok(field) -> bool:  # noqa: ANN001
            return not field.errors

        return StudyFilters(
            date_from=self.date_from.data if ok(self.date_from) else None,
            date_to=self.date_to.data if ok(self.date_to) and ok(self.date_from) else None,
            description=(self.description.data or "").strip() if ok(self.description) else "",
            modality=(self.modality.data or "").strip().upper() if ok(self.modality) else "",
            accession=(self.accession.data or "").strip() if ok(self.accession) else "",
        )

    def listed_studies(self) -> list[PickedStudy] | None:
        """The studies the last search listed for this patient (None: no valid list)."""
        if self.patient is None or not self.studies_token.data:
            return None
        return unseal(self.studies_token.data, self.patient.s_number)

    def report_ok(self) -> bool:
        self.report_text.validate(self)
        return not self.report_text.errors
