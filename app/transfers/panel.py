"""What the request page's Transfers section shows (one place, a few queries)."""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import Kind, Status
from app.transfers import service
from app.transfers.models import DicomNode, InboundStudy, NodeRole, Transfer


@dataclass
class Panel:
    transfers: list[Transfer]
    inbound: list[InboundStudy]
    search_nodes: list[DicomNode]
    # Per study on the gateway: is it known complete, and in words ("arriving: 103 so far").
    arrival: dict[int, tuple[bool, str]] = field(default_factory=dict)
    # Why Download to PACS would send an incomplete study now; empty when it may go.
    blockers: list[str] = field(default_factory=list)
    delivered: bool = False


def panel_for(req: Request) -> Panel:
    transfers = list(db.session.scalars(
        sa.select(Transfer).where(Transfer.request_id == req.id).order_by(Transfer.id.desc())
    ))
    inbound = list(db.session.scalars(sa.select(InboundStudy).where(InboundStudy.request_id == req.id)))
    role = NodeRole.REMOTE if req.kind == Kind.IMPORT else NodeRole.LOCAL_PACS
    nodes = list(db.session.scalars(sa.select(DicomNode).where(DicomNode.role == role.value, DicomNode.active)
                                    .order_by(DicomNode.name)))
    live = [s for s in inbound if s.purged_at is None]
    return Panel(transfers=transfers, inbound=inbound, search_nodes=nodes,
                 arrival={s.id: service.arrival_state(s) for s in live},
                 blockers=service.download_blockers(req, live) if live else [],
                 delivered=req.status in (Status.DELIVERED, Status.COMPLETED))
