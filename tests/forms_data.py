"""Valid submissions of each form, for tests to start from and break one field at a time."""

from __future__ import annotations

from datetime import timedelta

from app.timeutil import local_today


def _patient() -> dict[str, str]:
    return {
        "s_number": "S1234567",
        "nhs_number": "999 000 0018",
        "family_name": "Smith",
        "given_name": "Margaret",
        "dob": "1948-03-14",
        "gender": "Female",
        "address_line1": "12 Welford Road",
        "address_line2": "",
        "town": "Leicester",
        "county": "Leicestershire",
        "postcode": "LE2 7AA",
        "contact_name": "Dr Priya Shah",
        "contact_phone": "0116 258 4000",
        "contact_email": "priya.shah@uhl-tr.nhs.uk",
        "comments": "",
        "exams-0-exam_date": (local_today() - timedelta(days=30)).isoformat(),
        "exams-0-description": "CT chest abdomen pelvis",
        "exams-0-exam_code": "CCAPC",
        "action": "submit",
    }


def valid_import() -> dict[str, str]:
    return {
        **_patient(),
        "institution_name": "Nottingham University Hospitals NHS Trust",
        "priority": "Standard",
        "priority_reason": "",
        "requesting_clinician": "Dr Priya Shah",
        "consultant": "Dr Ahmed",
        "department": "Respiratory Medicine",
        "required_by": "",
    }


def valid_export() -> dict[str, str]:
    return {
        **_patient(),
        "institution_name": "Kettering General Hospital NHS Foundation Trust",
        "site_contact_name": "Dr Jane Rowe",
        "site_contact_position": "Consultant Radiologist",
        "site_contact_phone": "01536 492000",
        "site_contact_email": "jane.rowe@kgh.nhs.uk",
        "priority": "Standard",
        "priority_reason": "MDT Referral",
        "required_by": (local_today() + timedelta(days=7)).isoformat(),
    }


def valid_cd() -> dict[str, str]:
    data = {
        **_patient(),
        "cd_count": "2",
        "internal_post_address": "Ward 7, Leicester Royal Infirmary",
        "drop_off_site": "LRI",
    }
    data["exams-0-description"] = "MRI lumbar spine (Spire)"
    data["exams-0-exam_code"] = ""
    return data
