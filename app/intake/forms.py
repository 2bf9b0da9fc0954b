"""The three request forms, field for field with the guideline's appendices.

Single-field rules live in `validators.py`; rules across fields (address only when no NHS
number, Blue Light needs its reason, the PAS check) live in each form's `validate`.
"""

from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa
from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    EmailField,
    Field,
    FieldList,
    Form,
    FormField,
    HiddenField,
    IntegerField,
    RadioField,
    SelectField,
    StringField,
    TextAreaField,
    widgets,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import (
    Email,
    InputRequired,
    Length,
    NumberRange,
    Optional,
    StopValidation,
    ValidationError,
)

from app.extensions import db
from app.patients.lookup import Lookup, Outcome, found_message, patient_by_s_number, register_values
from app.patients.models import Patient
from app.requests import validators as rules
from app.requests.statuses import Priority
from app.timeutil import local_today

MAX_EXAM_LINES = 20
# What the form reads at most (a bound on the work a crafted post can cause); more than
# MAX_EXAM_LINES filled is refused with the limit, never cut silently (issue 11.14).
_EXAM_LINES_READ = 100

DROP_OFF_SITES = [
    SelectChoice("LRI", "LRI – Leicester Royal Infirmary, Radiology Reception"),
    SelectChoice("GH", "GH – Glenfield Hospital, Radiology Reception"),
    SelectChoice("LGH", "LGH – Leicester General Hospital, Radiology Reception"),
]

BLUE_LIGHT_EXPORT_REASON = "Blue Light – emergency admission or surgery in next 12 hours only"
EXPORT_REASONS = [
    BLUE_LIGHT_EXPORT_REASON,
    "Inpatient admission",
    "MDT Referral",
    "Outpatient appointment",
    "Research",
    "Other",
]

GENDERS = [SelectChoice("", "Not stated")] + [SelectChoice(g) for g in ("Female", "Male", "Other", "Unknown")]


class UKDateField(Field):
    """A date typed as YYYY-MM-DD (the browser's date picker) or DD/MM/YYYY."""

    widget = widgets.DateInput()

    def _value(self) -> str:
        if self.raw_data:
            return self.raw_data[0]
        return self.data.isoformat() if isinstance(self.data, date) else ""

    def process_formdata(self, valuelist: list[str]) -> None:
        self.data = None
        if not valuelist or not valuelist[0].strip():
            return
        text = valuelist[0].strip()
        for fmt in ("%Y-%m-%d", "%d/%m/%Y"):
            try:
                self.data = datetime.strptime(text, fmt).date()
                break
            except ValueError:
                continue
        else:
            raise ValueError("Enter a date as DD/MM/YYYY, e.g. 03/11/2026.")
        if self.data.year < 1900:
            self.data = None
            raise ValueError("Enter a date after 1900.")


class CountField(IntegerField):
    """A whole number, with a message a person understands when it is not one."""

    def process_formdata(self, valuelist: list[str]) -> None:
        try:
            super().process_formdata(valuelist)
        except ValueError as exc:
            raise ValueError("Enter a whole number, e.g. 2.") from exc


def _name_key(name: str) -> str:
    """A name compared as the register would: letters only, case ignored (O'Brien = OBRIEN)."""
    return "".join(ch for ch in name.upper() if ch.isalpha())


def _apply(rule, field: Field, *args) -> None:  # noqa: ANN001
    """Run a rule from `validators.py` on a field: clean its value or attach the error."""
    try:
        field.data = rule(field.data, *args)
    except rules.FieldError as exc:
        field.errors.append(str(exc))


class _Required(InputRequired):
    """Like InputRequired, but blank or whitespace-only input counts as missing."""

    def __call__(self, form, field) -> None:  # noqa: ANN001
        if not field.raw_data or not str(field.raw_data[0]).strip():
            field.errors[:] = []
            raise StopValidation(self.message)


def _required(message: str) -> InputRequired:
    return _Required(message)


class ExamLineForm(Form):
    """One examination: its date (mandatory), what it is, and the exam code if known."""

    exam_date = UKDateField("Date of examination")
    description = StringField(
        "Examination (type and body part)",
        validators=[Length(max=200)],
        render_kw={"placeholder": "e.g. CT head", "autocomplete": "off"},
    )
    exam_code = StringField(
        "Exam code (if known)",
        validators=[Length(max=20)],
        render_kw={"placeholder": "e.g. CHEAD", "autocomplete": "off"},
    )

    def is_blank(self) -> bool:
        return not (self.exam_date.raw_data and self.exam_date.raw_data[0].strip()) and not (
            (self.description.data or "").strip() or (self.exam_code.data or "").strip()
        )


class RequestForm(FlaskForm):
    """Fields every form shares: the patient (Appendix 1 step 2) and the UHL contact."""

    # Patient (guideline 2.3 a, 2.7 d).
    s_number = StringField(
        "S number (UHL hospital number)",
        validators=[_required("Enter the patient's S number.")],
        render_kw={"autocomplete": "off", "inputmode": "text", "spellcheck": "false"},
    )
    nhs_number = StringField(
        "NHS number (if available)",
        validators=[Length(max=20)],
        render_kw={"autocomplete": "off", "inputmode": "numeric", "spellcheck": "false"},
    )
    family_name = StringField(
        "Family name", validators=[_required("Enter the patient's family name."), Length(max=80)]
    )
    given_name = StringField(
        "Given name", validators=[_required("Enter the patient's given name."), Length(max=80)]
    )
    dob = UKDateField("Date of birth", validators=[_required("Enter the patient's date of birth.")])
    gender = SelectField("Gender", choices=GENDERS, validators=[Optional()])
    address_line1 = StringField("Address line 1", validators=[Length(max=120)])
    address_line2 = StringField("Address line 2", validators=[Length(max=120)])
    town = StringField("Town", validators=[Length(max=80)])
    county = StringField("County", validators=[Length(max=80)])
    postcode = StringField("Postcode", validators=[Length(max=10)])

    # UHL staff contact.
    contact_name = StringField("Your name", validators=[_required("Enter your name."), Length(max=120)])
    contact_phone = StringField(
        "Contact number", validators=[_required("Enter a number we can call you on."), Length(max=40)]
    )
    contact_email = EmailField(
        "E-mail",
        validators=[_required("Enter your e-mail address."), Email("Enter a valid e-mail address."), Length(max=254)],
    )
    comments = TextAreaField("Comments / additional instructions", validators=[Length(max=4000)])

    exams = FieldList(FormField(ExamLineForm), min_entries=1, max_entries=_EXAM_LINES_READ)
    # One key per filled-in form, so a double-clicked Submit cannot make two requests.
    submission_key = HiddenField()
    # Shown only beside a duplicate warning (app/intake/duplicates.py): ticked, the
    # request is saved and linked to the earlier one.
    confirm_duplicate = BooleanField("Submit anyway: this is a new request for the same examination")

    max_exam_lines = MAX_EXAM_LINES  # "Add another examination" stops here
    # Set by `validate`: the PAS record the patient was matched to.
    patient: Patient | None = None
    exam_needs_description = True

    def filled_exams(self) -> list[ExamLineForm]:
        return [entry.form for entry in self.exams.entries if not entry.form.is_blank()]

    def exam_keys(self) -> list[tuple[date | None, str, str]]:
        """The filled exam lines as (date, description, code), for the duplicate check."""
        return [
            (line.exam_date.data, (line.description.data or "").strip(), (line.exam_code.data or "").strip())
            for line in self.filled_exams()
        ]

    def validate(self, extra_validators=None) -> bool:  # noqa: ANN001
        super().validate(extra_validators)
        today = local_today()
        _apply(rules.clean_s_number, self.s_number)
        if (self.nhs_number.data or "").strip():
            _apply(rules.clean_nhs_number, self.nhs_number)
        else:
            self.nhs_number.data = ""
        if self.dob.data and not self.dob.errors:
            _apply(rules.check_not_future, self.dob, today, "date of birth")
        if (self.contact_phone.data or "").strip():
            _apply(rules.clean_phone, self.contact_phone)
        self._check_address()
        self._check_exams(today)
        self._check_pas()
        self.validate_kind(today)
        if self.has_errors():
            return False
        if self.patient is not None:
            take_register(self, self.patient)
        return True

    def has_errors(self) -> bool:
        # FieldList caches its errors during validate(); errors added to exam lines
        # afterwards are only seen by asking each line's form again.
        own = any(f.errors for name, f in self._fields.items() if name != "exams")
        return own or any(entry.form.errors for entry in self.exams.entries)

    def validate_kind(self, today: date) -> None:
        """Rules of one form only."""

    def _check_address(self) -> None:
        # Appendix 1 step 2: the address may be left out only when an NHS number is given.
        has_valid_nhs = bool(self.nhs_number.data) and not self.nhs_number.errors
        if has_valid_nhs:
            return
        if not (self.address_line1.data or "").strip():
            self.address_line1.errors.append(
                "Enter the patient's address (it may be left out only when a valid NHS number is given)."
            )
        if not (self.postcode.data or "").strip():
            self.postcode.errors.append(
                "Enter the patient's postcode (it may be left out only when a valid NHS number is given)."
            )

    def _check_exams(self, today: date) -> None:
        filled = self.filled_exams()
        if not filled:
            first = self.exams.entries[0].form
            first.exam_date.errors.append("State each examination with its date.")
            return
        if len(filled) > MAX_EXAM_LINES:
            filled[MAX_EXAM_LINES].description.errors.append(
                f"A request takes at most {MAX_EXAM_LINES} examination lines; this one has {len(filled)}. "
                f"Send the rest in a second request."
            )
        for line in filled:
            if line.exam_date.data is None and not line.exam_date.errors:
                line.exam_date.errors.append("Enter the date of this examination.")
            elif line.exam_date.data is not None:
                _apply(rules.check_not_future, line.exam_date, today, "examination date")
                if self.dob.data and line.exam_date.data and line.exam_date.data < self.dob.data:
                    line.exam_date.errors.append("The examination date is before the patient's date of birth.")
            description = (line.description.data or "").strip()
            code = (line.exam_code.data or "").strip()
            if self.exam_needs_description and not description:
                line.description.errors.append("Describe the examination (type and body part).")
            elif not description and not code:
                line.description.errors.append("Give the full study description or the CRIS exam code.")
            if description:
                _apply(rules.check_exam_description, line.description)
            line.exam_code.data = code.upper()

    def _check_pas(self) -> None:
        # Guideline 2.2 and 2.7 d-e: the patient must already be registered on the PAS.
        if self.s_number.errors:
            return
        patient = db.session.scalar(sa.select(Patient).where(Patient.s_number == self.s_number.data))
        if patient is None:
            self.s_number.errors.append(
                "No patient with this S number is registered on PatientCentre/HISS. "
                "Register the patient first (guideline 2.2), then send the request."
            )
            return
        self.patient = patient
        if self.nhs_number.data and not self.nhs_number.errors and patient.nhs_number and (
            patient.nhs_number != self.nhs_number.data
        ):
            self.nhs_number.errors.append(
                "This NHS number does not match the one registered for this S number. "
                "Check both against the patient's record."
            )
        if (self.family_name.data or "").strip() and _name_key(self.family_name.data) != _name_key(patient.family_name):
            self.family_name.errors.append(
                "This family name does not match the one registered for this S number. "
                "Check the S number, or the spelling against PatientCentre/HISS."
            )
        # issue 11.13: the given name is checked the same way (a register row without one is not).
        if (self.given_name.data or "").strip() and patient.given_name and (
            _name_key(self.given_name.data) != _name_key(patient.given_name)
        ):
            self.given_name.errors.append(
                "This given name does not match the one registered for this S number. "
                "Check the S number, or the spelling against PatientCentre/HISS."
            )
        if self.dob.data and not self.dob.errors and patient.dob != self.dob.data:
            self.dob.errors.append(
                "This date of birth does not match the one registered for this S number."
            )


PATIENT_FIELDS = (
    "s_number", "nhs_number", "family_name", "given_name", "dob", "gender",
    "address_line1", "address_line2", "town", "county", "postcode",
)


def take_register(form: FlaskForm, patient: Patient) -> None:
    """Put the register's values into the form's patient fields it holds (issue 13.8).

    What the register holds is what is shown and saved: a submission matched to a
    registered patient is saved with the register's spelling, NHS number and address
    (`validate`, once nothing is wrong), whatever a client did to the read-only fields; the
    checks above already refused a name, date of birth or NHS number that disagrees."""
    for name, value in register_values(patient).items():
        field = form[name]
        field.data = value
        field.raw_data = None  # a date field shows what was typed (raw_data) before its value


def shown_from_register(form: FlaskForm) -> Lookup | None:
    """The found state for a form page shown again (a refused submission, an exam line
    added): only when the patient fields already hold the register's values, as the autofill
    left them (that look-up was audited then), so that showing them again reveals nothing
    that was not typed. Else None: the fields show what was posted, editable."""
    raw = form["s_number"].data
    s_number = raw.strip().upper() if isinstance(raw, str) else ""
    if not s_number or any(form[name].errors for name in PATIENT_FIELDS):
        return None
    patient = patient_by_s_number(s_number)
    if patient is None:
        return None
    for name, value in register_values(patient).items():
        shown = form[name].data
        if name == "nhs_number" and isinstance(shown, str):
            shown = "".join(shown.split()).replace("-", "")
        if shown != value:
            return None
    return Lookup(Outcome.FOUND, found_message(patient), s_number=patient.s_number, patient=patient)


class PatientLookupForm(FlaskForm):
    """The patient fields alone, as the S number's autofill posts them (issue 13.8).

    Never validated: a look-up saves nothing, and the fields come back as typed when the
    register has no such patient. The request forms' own fields, shared, so both render alike."""

    class Meta:
        csrf = False  # CSRFProtect checks every POST; htmx sends the page's token as X-CSRFToken

    s_number = RequestForm.s_number
    nhs_number = RequestForm.nhs_number
    family_name = RequestForm.family_name
    given_name = RequestForm.given_name
    dob = RequestForm.dob
    gender = RequestForm.gender
    address_line1 = RequestForm.address_line1
    address_line2 = RequestForm.address_line2
    town = RequestForm.town
    county = RequestForm.county
    postcode = RequestForm.postcode
    # The S number the details on the page were filled from: when the next look-up finds
    # no one, those details are another patient's and are cleared, not kept as typed.
    pas_from = HiddenField()

    def clear_details(self) -> None:
        for name in PATIENT_FIELDS[1:]:
            self[name].data = "" if name != "dob" else None
            self[name].raw_data = None


class ImportForm(RequestForm):
    """Request for Import of Images to UHL PACS (Appendix 2; Appendix 1; guideline 2.3 a)."""

    institution_name = StringField(
        "Sending hospital or trust",
        validators=[_required("Enter the hospital or trust the images come from."), Length(max=160)],
        render_kw={"list": "institutions", "autocomplete": "off"},
    )
    priority = RadioField(
        "Priority",
        choices=[SelectChoice(p.value) for p in (Priority.STANDARD, Priority.BLUE_LIGHT, Priority.BATCH)],
        default=Priority.STANDARD.value,
        validators=[_required("Choose a priority.")],
    )
    priority_reason = StringField(
        "Reason for Blue Light",
        validators=[Length(max=200)],
        render_kw={"placeholder": "e.g. theatre at 14:00 today; arriving by ambulance"},
    )
    requesting_clinician = StringField(
        "Requesting clinician",
        validators=[_required("Enter the requesting clinician."), Length(max=120)],
    )
    consultant = StringField(
        "Consultant", validators=[_required("Enter the responsible consultant."), Length(max=120)]
    )
    department = StringField(
        "Department", validators=[_required("Enter the requesting department."), Length(max=120)]
    )
    required_by = UKDateField("Date images needed by (optional)", validators=[Optional()])

    def validate_kind(self, today: date) -> None:
        if self.priority.data == Priority.BLUE_LIGHT.value and not (self.priority_reason.data or "").strip():
            self.priority_reason.errors.append(
                "Blue Light is for patients due in theatre within hours or arriving by "
                "ambulance: say which."
            )
        if self.required_by.data and not self.required_by.errors:
            _apply(rules.check_not_past, self.required_by, today, "date needed by")


class ExportForm(RequestForm):
    """Request for Export of images from UHL PACS via IEP (Appendix 3; guideline 2.6 a)."""

    institution_name = StringField(
        "Which site/trust needs these studies? (organisation name in full)",
        validators=[_required("Enter the organisation that needs the studies, in full."), Length(max=160)],
        render_kw={"list": "institutions", "autocomplete": "off"},
    )
    site_contact_name = StringField(
        "Site contact name",
        validators=[_required("Enter the name of the person receiving the images."), Length(max=120)],
    )
    site_contact_position = StringField(
        "Site contact position", validators=[_required("Enter their position."), Length(max=120)]
    )
    site_contact_phone = StringField(
        "Site contact telephone number", validators=[_required("Enter their telephone number."), Length(max=40)]
    )
    site_contact_email = EmailField(
        "Site contact e-mail address",
        validators=[
            _required("Enter their e-mail address."),
            Email("Enter a valid e-mail address."),
            Length(max=254),
        ],
    )
    priority = RadioField(
        "Priority of request",
        choices=[
            SelectChoice(Priority.STANDARD.value, "Standard"),
            SelectChoice(Priority.BLUE_LIGHT.value, "Blue Light (emergency only)"),
        ],
        default=Priority.STANDARD.value,
        validators=[_required("Choose a priority.")],
    )
    priority_reason = SelectField(
        "Reason for priority",
        choices=[SelectChoice("", "Choose a reason")] + [SelectChoice(r) for r in EXPORT_REASONS],
        validators=[_required("Choose the reason for the priority.")],
    )
    required_by = UKDateField("Date required by", validators=[_required("Enter the date the studies are required by.")])

    def validate_kind(self, today: date) -> None:
        if (self.site_contact_phone.data or "").strip():
            _apply(rules.clean_phone, self.site_contact_phone)
        blue = self.priority.data == Priority.BLUE_LIGHT.value
        reason = self.priority_reason.data
        if blue and reason and reason != BLUE_LIGHT_EXPORT_REASON:
            self.priority_reason.errors.append(
                "Blue Light is for emergency admission or surgery in the next 12 hours only: "
                "choose that reason, or Standard priority."
            )
        if not blue and reason == BLUE_LIGHT_EXPORT_REASON:
            self.priority_reason.errors.append(
                "This reason is for Blue Light requests: choose Blue Light priority or another reason."
            )
        if self.required_by.data and not self.required_by.errors:
            _apply(rules.check_not_past, self.required_by, today, "date required by")

    def validate_priority_reason(self, field: Field) -> None:
        if field.data and field.data not in EXPORT_REASONS:
            raise ValidationError("Choose one of the listed reasons.")


class CDForm(RequestForm):
    """Request for CD Import to UHL PACS (Appendix 6; Appendix 5)."""

    exam_needs_description = False

    internal_post_address = StringField(
        "Internal post address",
        validators=[_required("Enter the internal post address the CDs can be returned to."), Length(max=200)],
    )
    cd_count = CountField(
        "Number of CDs",
        validators=[
            _required("Enter how many CDs you are handing in."),
            NumberRange(1, 20, "Enter a number of CDs from 1 to 20."),
        ],
        render_kw={"inputmode": "numeric", "min": 1, "max": 20},
    )
    drop_off_site = RadioField(
        "Radiology Reception where you will drop off the CDs",
        choices=DROP_OFF_SITES,
        validators=[_required("Choose where you will drop off the CDs.")],
    )
