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

# The admin home lists these in order. The node register predates this package and lives
# with the transfers (transfers.nodes, /admin/nodes).
SECTIONS: list[Section] = [
    Section("transfers.nodes", "DICOM nodes",
            "The PACS, the gateway and the other hospitals' nodes; test each with C-ECHO."),
    Section("admin.reports", "Compliance reports",
            "A month, half-year or year of requests, turnaround, the 4-hour target, transfers and CDs: "
            "on screen, as CSV and as a PDF for the IM&T newsletter (guideline section 4)."),
]

# The views register themselves on bp; each part is a module of its own, a name each here.
from app.admin import (  # noqa: E402
    reports,  # noqa: F401  (the compliance reports, issue 14.6)
    routes,  # noqa: F401
)
