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
    Section("admin.audit_trail", "Audit trail",
            "Who did what and when, filtered and exported as CSV; who has looked at a patient (guideline 2.7 a)."),
]

from app.admin import routes  # noqa: E402,F401,I001  (the views register themselves on bp; one line per part)
from app.admin import auditview  # noqa: E402,F401
