"""The DICOM node register: adding or updating a node, from the page or the CLI.

Plain values in, no Flask request here; like every service, it changes the session and
never commits (README, "Layout").
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from app import audit
from app.dicom.ae import Node
from app.extensions import db
from app.ids import whole_number
from app.requests.models import Institution
from app.transfers.models import DicomNode, NodeRole

NODE_FIELDS = ("name", "ae_title", "host", "port", "role", "institution")
# The text fields' columns: a longer value is refused by PostgreSQL at the commit (a 500,
# review 11.7), and SQLite would keep it whole. The AE title is checked by `Node` (16).
_STORED_IN = {"name": DicomNode.name, "host": DicomNode.host, "institution": Institution.name}
_LABELS = {"name": "The name", "host": "The host", "institution": "The institution"}


@dataclass(frozen=True)
class NodeValues:
    """The register form's fields as typed (stripped text; the port still text)."""

    name: str = ""
    ae_title: str = ""
    host: str = ""
    port: str = ""
    role: str = ""
    institution: str = ""


def upsert_node(name: str, ae_title: str, host: str, port: int, role: str, institution: str = "",
                supports_get: bool = True) -> DicomNode:
    """Add a node, or update the one with that name (idempotent). The caller commits.
    Raises ValueError, adding nothing, for a bad AE title or port."""
    Node(ae_title=ae_title, host=host, port=port)  # validates AE title and port
    node = db.session.scalar(sa.select(DicomNode).where(DicomNode.name == name))
    if node is None:
        node = DicomNode(name=name)
        db.session.add(node)
    node.ae_title, node.host, node.port, node.role, node.supports_get = ae_title.strip(), host, port, role, supports_get
    if institution:
        inst = db.session.scalar(sa.select(Institution).where(Institution.name == institution))
        if inst is None:
            inst = Institution(name=institution)
            db.session.add(inst)
        node.institution = inst
    return node


def node_errors(values: NodeValues) -> dict[str, str]:
    """What is wrong with the typed fields, by field name, in the analyst's words."""
    errors: dict[str, str] = {}
    if not values.name:
        errors["name"] = "Give the node a name."
    if not values.host:
        errors["host"] = "Give the node's host name or address."
    if whole_number(values.port, 1, 65535) is None:
        errors["port"] = "The port is a number from 1 to 65535."
    if values.role not in {r.value for r in NodeRole}:
        errors["role"] = "Choose a role."
    for key, column in _STORED_IN.items():
        limit = column.type.length
        if len(getattr(values, key)) > limit:
            errors[key] = f"{_LABELS[key]} can be at most {limit} characters; this one has {len(getattr(values, key))}."
    return errors


def register_node(values: NodeValues) -> dict[str, str]:
    """Save the node the register page typed in, audited: {} when saved, else the errors
    by field name (and nothing changed). Never commits."""
    errors = node_errors(values)
    if errors:
        return errors
    try:
        upsert_node(values.name, values.ae_title, values.host, int(values.port), values.role, values.institution)
    except ValueError:
        return {"ae_title": "An AE title has 1 to 16 characters, no backslash."}
    audit.record(audit.Action.EDIT, detail=f"node {values.name} saved")
    return {}
