"""What the request page's Transfers section shows (one place, a few queries)."""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import Kind, Status
from app.transfers import service
from app.transfers.models import DicomNode, InboundStudy, NodeRole, RisEntry, Transfer


@dataclass(frozen=True)
class Filed:
    """One imported study as PACS and RIS have it (issue 13.9): the sender's Patient ID
    and issuer -> the S number, and the RIS entry written (exam code, event date)."""

    entry: RisEntry
    description: str
    modalities: str


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
    filed: list[Filed] = field(default_factory=list)
    # The local PACS search applies to exports (and trauma); an import searches remote
    # nodes; a CD's images come from the CD itself (DESIGN "The four flows", 3).
    can_search: bool = True


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
                 delivered=req.status in (Status.DELIVERED, Status.COMPLETED),
                 filed=filed_studies(req, inbound), can_search=search_applies(req))


def search_applies(req: Request) -> bool:
    """Whether the request page offers a PACS search: not for a CD import, whose studies
    come from the uploaded CD (DESIGN "The four flows", 3)."""
    return req.kind != Kind.CD


def filed_studies(req: Request, inbound: list[InboundStudy]) -> list[Filed]:
    """The request's RIS entries, oldest examination first, with their study's description."""
    entries = db.session.scalars(sa.select(RisEntry).where(RisEntry.request_id == req.id)
                                 .order_by(RisEntry.event_date.is_(None), RisEntry.event_date, RisEntry.id))
    by_uid = {s.study_uid: s for s in inbound}
    return [Filed(entry=e, description=by_uid[e.study_uid].description if e.study_uid in by_uid else "",
                  modalities=by_uid[e.study_uid].modalities if e.study_uid in by_uid else "") for e in entries]
