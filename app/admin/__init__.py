"""Administration (DESIGN "Who uses it": admin — users, roles, institutions, nodes, reports).

One blueprint, `admin`, under /admin. Each part of the administration lives in a module of
its own that adds its views to `bp` and its entry to `SECTIONS` (the admin home's links);
the modules are imported at the end of this file, after `bp` exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint


@dataclass(frozen=True)
class Section:
    """One link on the admin home: the endpoint it opens, its title and what it is for."""

    endpoint: str
    title: str
    summary: str


bp = Blueprint("admin", __name__, url_prefix="/admin")

# The admin home lists these in order: people, places, the register, then what is reported.
# The node register predates this package and lives with the transfers (transfers.nodes).
SECTIONS: list[Section] = [
    Section("admin.users", "Users",
            "Find and add desk accounts; change a role, deactivate, unlock sign-in, ask for a new password."),
    Section("admin.training", "Training register",
            "Who was trained on the desk, by whom and when; staff with a desk role and no training record."),
    Section("admin.institutions", "Institutions",
            "The hospitals we exchange images with: site, contact e-mail, the node that reaches them."),
    Section("transfers.nodes", "DICOM nodes",
            "The PACS, the gateway and the other hospitals' nodes; test each with C-ECHO."),
    Section("admin.pas", "PAS register",
            "Upload a PatientCentre/HISS extract, see what it would change, then apply it."),
    Section("admin.audit_trail", "Audit trail",
            "Who did what and when, filtered and exported as CSV; who has looked at a patient (guideline 2.7 a)."),
    Section("admin.reports", "Compliance reports",
            "A month, half-year or year of requests, turnaround, the 4-hour target, transfers and CDs: "
            "on screen, as CSV and as a PDF for the IM&T newsletter (guideline section 4)."),
]

from app.admin import (  # noqa: E402,F401  (the views register themselves on bp)
    auditview,  # issue 14.5
    pasup,  # issue 14.3
    places,  # issue 14.2, institutions
    reports,  # issue 14.6
    routes,
    training,  # issue 14.7
    users,  # issue 14.1
)
