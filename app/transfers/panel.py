"""What the request page's Transfers section shows (one place, a few queries)."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from app.extensions import db
from app.intake.models import Request
from app.transfers.models import DicomNode, InboundStudy, NodeRole, Transfer
from app.workflow.statuses import Kind


@dataclass
class Panel:
    transfers: list[Transfer]
    inbound: list[InboundStudy]
    search_nodes: list[DicomNode]


def panel_for(req: Request) -> Panel:
    transfers = list(db.session.scalars(sa.select(Transfer).where(Transfer.request_id == req.id).order_by(Transfer.id.desc())))
    inbound = list(db.session.scalars(sa.select(InboundStudy).where(InboundStudy.request_id == req.id)))
    role = NodeRole.REMOTE if req.kind == Kind.IMPORT else NodeRole.LOCAL_PACS
    nodes = list(db.session.scalars(sa.select(DicomNode).where(DicomNode.role == role.value, DicomNode.active)
                                    .order_by(DicomNode.name)))
    return Panel(transfers=transfers, inbound=inbound, search_nodes=nodes)
