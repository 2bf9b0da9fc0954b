"""The PACS search for one request's patient: one call to `scu.find_studies`, which asks
by every identifier the desk has on one association and merges the answers by Study
Instance UID, newest first. No Flask request here; nothing is written."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from app.dicom import scu
from app.requests.models import Request
from app.requests.statuses import Kind
from app.transfers import exams
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


@dataclass(frozen=True)
class Proposal:
    """The search results set beside the request's exam lines (issue 13.10): which study
    fits which line, so the matching studies are ticked before AM radiology looks."""

    lines: list[exams.Line]
    fits: dict[str, exams.Fit]  # Study Instance UID -> the line(s) it fits best
    line_studies: dict[int, list[scu.StudySummary]]  # exam line index -> the studies that fit it

    @property
    def ticked(self) -> set[str]:
        return set(self.fits)


def propose(req: Request, studies: list[scu.StudySummary]) -> Proposal:
    """Match each study found to the request's exam lines (date, body part, modality)."""
    lines = exams.lines_of(req.exams)
    fits: dict[str, exams.Fit] = {}
    line_studies: dict[int, list[scu.StudySummary]] = {i: [] for i in range(len(lines))}
    for study in studies:
        fit = exams.best_fit(exams.Study.of(study.study_date, study.description, study.modalities), lines)
        if fit is None:
            continue
        fits[study.study_uid] = fit
        for i in fit.lines:
            line_studies[i].append(study)
    return Proposal(lines=lines, fits=fits, line_studies=line_studies)
