"""`transfers.nodes.register_node`: the node register page's work as a service taking plain
values (issue 9.5); it audits and never commits."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app.audit import AuditEvent
from app.extensions import db
from app.transfers.models import DicomNode
from app.transfers.nodes import NodeValues, register_node

GOOD = NodeValues(name="Leeds PACS", ae_title="LEEDS", host="10.1.2.3", port="104", role="remote",
                  institution="Leeds Teaching Hospitals")


def _count(model) -> int:  # noqa: ANN001
    return db.session.scalar(sa.select(sa.func.count()).select_from(model)) or 0


def test_a_good_node_is_saved_and_audited_and_the_caller_commits(app):
    assert register_node(GOOD) == {}
    node = db.session.scalar(sa.select(DicomNode))
    assert (node.ae_title, node.port, node.institution.name) == ("LEEDS", 104, "Leeds Teaching Hospitals")
    assert db.session.scalar(sa.select(AuditEvent.detail)) == "node Leeds PACS saved"
    db.session.rollback()
    assert _count(DicomNode) == 0 and _count(AuditEvent) == 0


def test_adding_a_name_again_is_refused_and_editing_is_by_id(app):
    """Issue 14.4: the add form no longer updates a node of the same name; Edit does, by id."""
    register_node(GOOD)
    errors = register_node(NodeValues(**{**GOOD.__dict__, "host": "10.9.9.9"}))
    assert errors == {"name": "A node named Leeds PACS is already registered: use its Edit button to change it."}
    node = db.session.scalars(sa.select(DicomNode)).one()
    assert register_node(NodeValues(**{**GOOD.__dict__, "name": "Leeds PACS 2", "host": "10.9.9.9"}), node) == {}
    assert [(n.id, n.name, n.host) for n in db.session.scalars(sa.select(DicomNode))] == [
        (node.id, "Leeds PACS 2", "10.9.9.9")]


@pytest.mark.parametrize(("change", "field"), [
    ({"name": ""}, "name"),
    ({"host": ""}, "host"),
    ({"port": "0"}, "port"),
    ({"port": "65536"}, "port"),
    ({"port": "1o4"}, "port"),
    ({"role": "printer"}, "role"),
    ({"ae_title": "A" * 17}, "ae_title"),
    ({"ae_title": "BACK\\SLASH"}, "ae_title"),
], ids=["name_required", "host_required", "port_0_refused", "port_65536_refused", "port_not_a_number",
        "role_unknown", "ae_title_over_16", "ae_title_backslash"])
def test_a_bad_field_is_named_and_nothing_is_added(app, change, field):
    errors = register_node(NodeValues(**{**GOOD.__dict__, **change}))
    assert list(errors) == [field]
    assert _count(DicomNode) == 0 and _count(AuditEvent) == 0
