"""The DICOM node register: adding, editing, deactivating and deleting nodes, from the page
or the CLI (issue 14.4).

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
from app.transfers.models import DicomNode, NodeRole, Transfer

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
    supports_get: bool = True


def institution_named(name: str) -> Institution | None:
    """The registered institution of that name, in any case (active or not)."""
    return db.session.scalar(sa.select(Institution).where(sa.func.lower(Institution.name) == name.lower()))


def upsert_node(name: str, ae_title: str, host: str, port: int, role: str, institution: str = "",
                supports_get: bool = True) -> DicomNode:
    """Add a node, or update the one with that name (idempotent: the CLI's `nodes add`).
    The caller commits. Raises ValueError, adding nothing, for a bad AE title or port."""
    Node(ae_title=ae_title, host=host, port=port)  # validates AE title and port
    node = db.session.scalar(sa.select(DicomNode).where(DicomNode.name == name))
    if node is None:
        node = DicomNode(name=name)
        db.session.add(node)
    _fill(node, ae_title, host, port, role, supports_get)
    if institution:
        node.institution = _institution(institution)
    return node


def _fill(node: DicomNode, ae_title: str, host: str, port: int, role: str, supports_get: bool) -> None:
    node.ae_title, node.host, node.port, node.role, node.supports_get = ae_title.strip(), host, port, role, supports_get


def _institution(name: str) -> Institution:
    """The institution of that name, registered now when it is not yet (as `nodes add` always did)."""
    inst = institution_named(name)
    if inst is None:
        inst = Institution(name=name)
        db.session.add(inst)
        audit.record(audit.Action.INSTITUTION_CHANGED, detail=f"institution {name} added from the node register")
    return inst


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
    try:
        Node(ae_title=values.ae_title, host=values.host, port=104)  # the AE title's rules (the port's: above)
    except ValueError:
        errors["ae_title"] = "An AE title has 1 to 16 characters, no backslash."
    return errors


def register_node(values: NodeValues, node: DicomNode | None = None) -> dict[str, str]:
    """Add a node (`node` None) or change `node`, by id — its name included — audited: {}
    when saved, else the errors by field name (and nothing changed). A name another node
    has is refused: editing is explicit (issue 14.4). Never commits."""
    errors = node_errors(values)
    if not errors:
        other = db.session.scalar(sa.select(DicomNode).where(sa.func.lower(DicomNode.name) == values.name.lower()))
        if other is not None and other is not node:
            errors["name"] = (f"A node named {other.name} is already registered: use its Edit button to change it."
                              if node is None else f"Another node is already named {other.name}.")
    if errors:
        return errors
    if node is None:
        node = DicomNode(name=values.name)
        db.session.add(node)
        audit.record(audit.Action.NODE_CHANGED, detail=f"node {values.name} saved")
        _fill(node, values.ae_title, values.host, int(values.port), values.role, values.supports_get)
        node.institution = _institution(values.institution) if values.institution else None
        return {}
    was = _shown(node)
    node.name = values.name
    _fill(node, values.ae_title, values.host, int(values.port), values.role, values.supports_get)
    node.institution = _institution(values.institution) if values.institution else None
    changed = [f"{key} {was[key]} -> {now}" for key, now in _shown(node).items() if was[key] != now]
    audit.record(audit.Action.NODE_CHANGED,
                 detail=f"node {node.id} changed: " + ("; ".join(changed) if changed else "nothing"))
    return {}


def _shown(node: DicomNode) -> dict[str, object]:
    """A node's settings as the audit names them."""
    return {"name": node.name, "ae_title": node.ae_title, "host": node.host, "port": node.port, "role": node.role,
            "c_get": node.supports_get, "institution": node.institution.name if node.institution else "none"}


def transfers_using(node: DicomNode) -> int:
    """How many transfers name the node as source or destination."""
    return db.session.scalar(sa.select(sa.func.count()).select_from(Transfer).where(
        sa.or_(Transfer.source_node_id == node.id, Transfer.dest_node_id == node.id))) or 0


def set_node_active(node: DicomNode, active: bool) -> None:
    """Deactivate (no longer offered for new transfers; old ones still show it) or
    reactivate a node, audited. Never commits."""
    if node.active != active:
        node.active = active
        audit.record(audit.Action.NODE_CHANGED,
                     detail=f"node {node.id} {node.name} {'reactivated' if active else 'deactivated'}")


def delete_node(node: DicomNode) -> int:
    """Delete a node nothing refers to, audited; returns 0. A node transfers refer to is
    kept (deactivate it instead): returns how many refer to it. Never commits."""
    using = transfers_using(node)
    if using:
        return using
    audit.record(audit.Action.NODE_CHANGED, detail=f"node {node.id} {node.name} deleted ({node.ae_title}@"
                                                    f"{node.host}:{node.port})")
    db.session.delete(node)
    return 0
