"""The PACS search for one request's patient: one call to `scu.find_studies`, which asks
by every identifier the desk has on one association and merges the answers by Study
Instance UID, newest first. No Flask request here; nothing is written."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from app.dicom import scu
from app.requests.models import Request
from app.requests.statuses import Kind
from app.transfers.models import DicomNode
from app.transfers.service import ae_config, as_node


@dataclass(frozen=True)
class StudyFilters:
    """The search box's narrowing fields; empty ones are left out of the query."""

    date_from: date | None = None
    date_to: date | None = None
    modality: str = ""
    description: str = ""
    accession: str = ""


def find_patient_studies(node: DicomNode, req: Request, filters: StudyFilters) -> list[scu.StudySummary]:
    """The studies `node` holds for the patient of `req`, newest first: by S number, by
    NHS number, and for an import also by family name and birth date (another hospital
    files the patient under its own id). Raises DicomFailure when the node fails."""
    by_name = req.kind == Kind.IMPORT
    return scu.find_studies(
        as_node(node),
        patient_id=req.s_number,
        nhs_number=req.nhs_number or None,
        family_name=req.patient.family_name.upper() if by_name else None,
        birth_date=req.patient.dob if by_name else None,
        date_from=filters.date_from,
        date_to=filters.date_to,
        modality=filters.modality or None,
        description=filters.description or None,
        accession=filters.accession or None,
        config=ae_config(),
    )
