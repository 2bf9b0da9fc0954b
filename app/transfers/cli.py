"""`flask --app wsgi nodes ...`: the DICOM node register."""

from __future__ import annotations

import click
import sqlalchemy as sa
from flask.cli import AppGroup

from app.dicom import scu
from app.dicom.errors import DicomFailure
from app.extensions import db
from app.transfers import service
from app.transfers.models import DicomNode, NodeRole
from app.transfers.nodes import NodeValues, node_errors, upsert_node

__all__ = ["nodes_cli", "upsert_node"]  # upsert_node: older callers import it from here

nodes_cli = AppGroup("nodes", help="DICOM nodes: the local PACS, the gateway, remote hospitals.")


@nodes_cli.command("add")
@click.option("--name", required=True)
@click.option("--ae-title", required=True)
@click.option("--host", required=True)
@click.option("--port", required=True, type=click.IntRange(1, 65535))
@click.option("--institution", default="")
@click.option("--role", default=NodeRole.REMOTE.value, type=click.Choice([r.value for r in NodeRole]))
@click.option("--no-c-get", is_flag=True, help="The node only answers C-MOVE (to our AE).")
def add(name: str, ae_title: str, host: str, port: int, institution: str, role: str, no_c_get: bool) -> None:
    """Add (or update) a DICOM node."""
    errors = node_errors(NodeValues(name=name.strip(), ae_title=ae_title, host=host.strip(), port=str(port),
                                    role=role, institution=institution.strip()))
    if errors:  # the register page's own checks (lengths the columns hold, above all)
        raise click.UsageError(" ".join(errors.values()))
    try:
        node = upsert_node(name, ae_title, host, port, role, institution, supports_get=not no_c_get)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    db.session.commit()
    click.echo(f"Node {node.name}: {node.ae_title}@{node.host}:{node.port} ({node.role})")


@nodes_cli.command("list")
def list_nodes() -> None:
    """List the nodes."""
    for node in db.session.scalars(sa.select(DicomNode).order_by(DicomNode.name)):
        click.echo(f"{node.name}\t{node.ae_title}@{node.host}:{node.port}\t{node.role}")


@nodes_cli.command("echo")
@click.argument("name")
def echo(name: str) -> None:
    """C-ECHO a node and print the answer."""
    node = db.session.scalar(sa.select(DicomNode).where(DicomNode.name == name))
    if node is None:
        raise click.ClickException(f"no node named {name}")
    try:
        ms = scu.echo(service.as_node(node), config=service.ae_config())
    except DicomFailure as failure:
        raise click.ClickException(failure.plain) from failure
    click.echo(f"{node.name} answered in {ms:.0f} ms")
