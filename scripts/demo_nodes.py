#!/usr/bin/env python3
"""Demo DICOM nodes on loopback, so a fresh machine can run an export and an import.

    .venv/bin/python scripts/demo_nodes.py [--data-dir DIR] [--reset] [--seed-only]

Two query/retrieve archives in one process, both bound to 127.0.0.1 (ports and AE titles
from `app.demo.demo_nodes()`, which `flask --app wsgi demo seed` registers as nodes):

- **UHLPACSWFM01** (the local PACS, port 11113): two studies per demo PAS patient, filed
  under the S number (a CT of three series and a chest X-ray).
- **NUHPACS** ("NUH Radiology PACS", port 11114): one MRI per demo patient, filed under
  NUH's own id (`app.demo.remote_patient_id`, e.g. NUH700001) with the same name and date
  of birth, and the NHS number as an Other Patient ID (issuer NHS).

Each answers C-ECHO, C-FIND (patient, study, series and image level; Patient and Study
Root), C-GET, C-MOVE and C-STORE. A C-MOVE goes to the AE titles it knows: the desk's
gateway (GATEWAY_AE_TITLE at 127.0.0.1:GATEWAY_PORT, default IEPDESK:11112) and the other
demo node. Like many PACS that cross-reference patient ids, a Patient ID key also matches
an Other Patient ID, so the desk's search by NHS number finds NUH's studies.

Why not `python -m pynetdicom qrscp`: it does the five services, but its C-FIND answers
only PatientID/PatientName and the study/series/image UIDs, dates, accession and numbers
(no date of birth, description, modalities or instance counts, so the desk's search
results are blank columns), it matches Patient ID exactly (the NHS-number search finds
nothing at a remote hospital that files under its own id), and it cannot set TCP_NODELAY.

Data lives in `instance/demo-nodes/<AE title>/store/<study UID>/<SOP UID>.dcm`; it is
generated on first start (and for demo patients added since) and kept between runs;
`--reset` deletes and regenerates it. Every socket gets TCP_NODELAY (shared/PITFALLS.md:
without it each instance waits for a delayed ACK). SIGTERM or Ctrl+C stops both nodes.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `app` is the repository's

from pydicom import dcmread  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.multival import MultiValue  # noqa: E402
from pynetdicom import AE, AllStoragePresentationContexts, build_context, evt  # noqa: E402
from pynetdicom.dimse_primitives import C_STORE  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from app.demo import DemoNode, demo_nodes, demo_patients, remote_patient_id  # noqa: E402
from app.dicom.ae import MAX_PDU, RECEIVE_TRANSFER_SYNTAXES, set_tcp_nodelay  # noqa: E402
from app.dicom.scp import Incoming, Received  # noqa: E402
from app.dicom.synth import make_study  # noqa: E402

log = logging.getLogger("demo-nodes")


def receive(event: evt.Event, *, storage_dir: Path, quarantine_dir: Path) -> Received:
    """A pynetdicom C-STORE event through the desk's own checks (`scp.Incoming`): the demo
    nodes are pynetdicom SCPs, standing in for other hospitals' PACS. Never raises."""
    request = cast(C_STORE, event.request)  # an EVT_C_STORE handler's request
    details: dict[str, object] = {
        "calling_ae": str(getattr(event.assoc.requestor, "ae_title", "") or "").strip(),
        "affected_sop_class_uid": str(request.AffectedSOPClassUID or ""),
        "affected_sop_instance_uid": str(request.AffectedSOPInstanceUID or ""),
    }
    try:
        incoming = Incoming(storage_dir, sop_class=str(request.AffectedSOPClassUID or ""),
                            sop_uid=str(request.AffectedSOPInstanceUID or ""),
                            syntax=str(event.context.transfer_syntax), details=details)
        incoming.write(event.encoded_dataset(include_meta=False))
    except Exception as exc:  # noqa: BLE001 - a demo PACS keeps serving
        log.exception("C-STORE failed unexpectedly")
        return Received(0xC22F, f"internal error: {type(exc).__name__}")
    return incoming.finish(storage_dir=storage_dir, quarantine_dir=quarantine_dir)

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
UNIQUE = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
          "IMAGE": "SOPInstanceUID"}
# What each level holds (a level's record also carries the levels above it).
ATTRIBUTES = {
    "PATIENT": ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex"),
    "STUDY": ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
              "ReferringPhysicianName", "InstitutionName"),
    "SERIES": ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "SeriesDate",
               "BodyPartExamined"),
    "IMAGE": ("SOPInstanceUID", "SOPClassUID", "InstanceNumber", "ContentDate"),
}
NOT_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability"}


# --- the archive: files on disk, an index in memory ---------------------------------------------


@dataclass
class Instance:
    path: Path
    syntax: str
    attrs: dict[str, Any]
    other_ids: tuple[str, ...] = ()


@dataclass
class Archive:
    """One node's instances (a few hundred at most: the index is rebuilt at start)."""

    store: Path
    instances: dict[str, Instance] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self) -> Archive:
        for path in sorted(self.store.rglob("*.dcm")):
            if ".incoming" not in path.parts:
                self.add(path)
        return self

    def add(self, path: Path) -> None:
        ds = dcmread(path, stop_before_pixels=True)
        attrs = {kw: _plain(ds.get(kw)) for level in LEVELS for kw in ATTRIBUTES[level]}
        others = [str(item.get("PatientID", "")) for item in ds.get("OtherPatientIDsSequence", None) or []]
        others += [str(v) for v in _as_list(ds.get("OtherPatientIDs"))]
        instance = Instance(path, str(ds.file_meta.TransferSyntaxUID), attrs, tuple(o for o in others if o))
        with self.lock:
            self.instances[str(attrs["SOPInstanceUID"])] = instance

    def snapshot(self) -> list[Instance]:
        with self.lock:
            return sorted(self.instances.values(), key=lambda i: (
                str(i.attrs["StudyDate"] or ""), str(i.attrs["StudyInstanceUID"]), _num(i.attrs["SeriesNumber"]),
                str(i.attrs["SeriesInstanceUID"]), _num(i.attrs["InstanceNumber"])))

    def records(self, level: str) -> Iterator[tuple[dict[str, Any], tuple[str, ...], list[Instance]]]:
        """(record, other patient ids, instances) for each entity at `level`."""
        key = UNIQUE[level]
        groups: dict[str, list[Instance]] = {}
        for instance in self.snapshot():
            groups.setdefault(str(instance.attrs[key]), []).append(instance)
        upto = LEVELS[: LEVELS.index(level) + 1]
        for members in groups.values():
            first = members[0]
            record = {kw: first.attrs[kw] for lvl in upto for kw in ATTRIBUTES[lvl]}
            series = {str(i.attrs["SeriesInstanceUID"]) for i in members}
            if level == "PATIENT":
                record["NumberOfPatientRelatedStudies"] = len({str(i.attrs["StudyInstanceUID"]) for i in members})
                record["NumberOfPatientRelatedSeries"] = len(series)
                record["NumberOfPatientRelatedInstances"] = len(members)
            elif level == "STUDY":
                record["ModalitiesInStudy"] = sorted({str(i.attrs["Modality"]) for i in members if i.attrs["Modality"]})
                record["SOPClassesInStudy"] = sorted({str(i.attrs["SOPClassUID"]) for i in members})
                record["NumberOfStudyRelatedSeries"] = len(series)
                record["NumberOfStudyRelatedInstances"] = len(members)
            elif level == "SERIES":
                record["NumberOfSeriesRelatedInstances"] = len(members)
            others = tuple(sorted({o for i in members for o in i.other_ids}))
            yield record, others, members


def _plain(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue):
        return [str(v) for v in value]
    if isinstance(value, (int, float)):
        return value
    return str(value)


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return list(value)
    return [value]


def _num(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


# --- C-FIND matching (PS3.4 C.2.2.2) ---------------------------------------------------------------


def _matches(record: dict[str, Any], others: tuple[str, ...], ident: Dataset) -> bool:
    for elem in ident:
        keyword = elem.keyword
        if not keyword or keyword in NOT_KEYS or elem.VR == "SQ":
            continue
        wanted = elem.value
        if wanted is None or wanted == "" or (isinstance(wanted, (list, MultiValue)) and not list(wanted)):
            continue  # universal matching
        if keyword == "PatientID":
            have = [str(record.get("PatientID") or "")] + list(others)  # cross-referenced ids
        elif keyword in record:
            have = [str(v) for v in _as_list(record[keyword])]
        else:
            continue  # a key we do not hold: not used for matching, returned empty
        if not _match_any(elem.VR, [str(w) for w in _as_list(wanted)], have):
            return False
    return True


def _match_any(vr: str, wanted: list[str], have: list[str]) -> bool:
    for pattern in wanted:
        for value in have:
            if vr in ("DA", "TM", "DT") and "-" in pattern:
                low, _, high = pattern.partition("-")
                size = len(low or high)
                if (not low or value[:size] >= low) and (not high or value[:size] <= high):
                    return True
            elif "*" in pattern or "?" in pattern:
                if re.fullmatch(fnmatch.translate(pattern.upper()), value.upper(), re.DOTALL):
                    return True
            elif vr in ("IS", "US", "UL", "SL", "SS", "DS"):
                if _num(pattern) == _num(value):
                    return True
            elif pattern.strip().upper() == value.strip().upper():  # case-insensitive, as most PACS
                return True
    return False


def _charset(*texts: str) -> str:
    """Latin-1 (ISO_IR 100) for names it can write, else UTF-8 (ISO_IR 192): the demo
    patients 山田 花子 and ΠΑΠΑΔΟΠΟΥΛΟΣ Γιώργος (PS3.3 C.12.1.1.2)."""
    try:
        for text in texts:
            text.encode("latin-1")
    except UnicodeEncodeError:
        return "ISO_IR 192"
    return "ISO_IR 100"


def _response(level: str, record: dict[str, Any], ident: Dataset, ae_title: str) -> Dataset:
    rsp = Dataset()
    charset = _charset(*(str(v) for v in record.values() if isinstance(v, str)))
    if "SpecificCharacterSet" in ident or charset != "ISO_IR 100":
        rsp.SpecificCharacterSet = charset
    rsp.QueryRetrieveLevel = level
    for elem in ident:
        keyword = elem.keyword
        if not keyword or keyword in NOT_KEYS:
            continue
        if elem.VR == "SQ":
            rsp.add_new(elem.tag, "SQ", [])
            continue
        value = record.get(keyword)
        rsp.add_new(elem.tag, elem.VR, value if value not in (None, []) else None)
    rsp.RetrieveAETitle = ae_title
    return rsp


def _selected(archive: Archive, ident: Dataset) -> tuple[str, list[Instance]] | None:
    """The instances a C-GET / C-MOVE asks for (by the unique keys), or None if the
    identifier is not a proper retrieve (no level, or no unique key at its level)."""
    level = str(ident.get("QueryRetrieveLevel", "")).upper()
    if level not in LEVELS or not ident.get(UNIQUE[level]):
        return None
    keys = Dataset()
    for lvl in LEVELS[: LEVELS.index(level) + 1]:
        if UNIQUE[lvl] in ident:
            keys.add(ident[UNIQUE[lvl]])
    picked = []
    for record, others, members in archive.records("IMAGE"):
        if _matches(record, others, keys):
            picked.extend(members)
    return level, picked


# --- the node ----------------------------------------------------------------------------------------


@dataclass
class DemoSCP:
    node: DemoNode
    archive: Archive
    quarantine: Path
    destinations: dict[str, tuple[str, int]]
    server: Any = None

    def start(self) -> DemoSCP:
        ae = AE(ae_title=self.node.ae_title)
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout, ae.connection_timeout = 30, 60, 120, 10
        ae.maximum_pdu_size = MAX_PDU
        ae.require_called_aet = True
        ae.maximum_associations = 10
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            # scp_role=True: the peer may also take the SCP role for it (our C-GET sub-operations)
            ae.add_supported_context(cx.abstract_syntax, RECEIVE_TRANSFER_SYNTAXES, scp_role=True, scu_role=False)
        for model in (PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelGet,
                      PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelFind,
                      StudyRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelMove):
            ae.add_supported_context(model)
        handlers = [
            (evt.EVT_CONN_OPEN, set_tcp_nodelay),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_RELEASED, self.on_end),
            (evt.EVT_ABORTED, self.on_end),
        ]
        self.server = ae.start_server((self.node.host, self.node.port), block=False, evt_handlers=handlers)
        log.info("%s listening on %s:%s (%d instances)", self.node.ae_title, self.node.host, self.node.port,
                 len(self.archive.instances))
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def _peer(self, event: evt.Event) -> str:
        return str(event.assoc.requestor.ae_title or "?").strip()

    def on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        ident = event.identifier
        level = str(ident.get("QueryRetrieveLevel", "")).upper()
        if level not in LEVELS:
            yield 0xA900, None  # identifier does not match SOP class
            return
        found = 0
        for record, others, _members in self.archive.records(level):
            if event.is_cancelled:
                yield 0xFE00, None
                return
            if _matches(record, others, ident):
                found += 1
                yield 0xFF00, _response(level, record, ident, self.node.ae_title)
        log.info("%s: C-FIND %s level from %s: %d match(es)", self.node.ae_title, level, self._peer(event), found)

    def on_get(self, event: evt.Event) -> Iterator[Any]:
        selected = _selected(self.archive, event.identifier)
        if selected is None:
            yield 0xA900, None
            return
        level, picked = selected
        log.info("%s: C-GET %s level from %s: %d instance(s)", self.node.ae_title, level, self._peer(event),
                 len(picked))
        yield len(picked)
        for instance in picked:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, dcmread(instance.path)

    def on_move(self, event: evt.Event) -> Iterator[Any]:
        target = (event.move_destination or "").strip()
        destination = self.destinations.get(target)
        if destination is None:
            log.warning("%s: C-MOVE to unknown destination %r refused (0xA801)", self.node.ae_title, target[:16])
            yield None, None
            return
        selected = _selected(self.archive, event.identifier)
        if selected is None:
            yield 0xA900, None
            return
        level, picked = selected
        pairs = sorted({(str(i.attrs["SOPClassUID"]), i.syntax) for i in picked})
        contexts = [build_context(sop, syntax) for sop, syntax in pairs][:128]
        log.info("%s: C-MOVE %s level from %s to %s: %d instance(s)", self.node.ae_title, level,
                 self._peer(event), target, len(picked))
        yield destination[0], destination[1], {
            "contexts": contexts, "max_pdu": MAX_PDU, "evt_handlers": [(evt.EVT_CONN_OPEN, set_tcp_nodelay)]}
        yield len(picked)
        for instance in picked:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, dcmread(instance.path)

    def on_store(self, event: evt.Event) -> Dataset:
        received = receive(event, storage_dir=self.archive.store, quarantine_dir=self.quarantine)
        if received.ok and received.path is not None:
            try:
                self.archive.add(received.path)
            except Exception:  # noqa: BLE001 - stored is stored; the index is rebuilt at start
                log.exception("%s: stored a file it cannot index", self.node.ae_title)
            event.assoc.demo_stored = getattr(event.assoc, "demo_stored", 0) + 1
        else:
            log.warning("%s: C-STORE refused (0x%04X): %s", self.node.ae_title, received.status, received.reason)
        return received.status_dataset()

    def on_end(self, event: evt.Event) -> None:
        stored = getattr(event.assoc, "demo_stored", 0)
        if stored and event.assoc.is_acceptor:
            log.info("%s: stored %d instance(s) from %s", self.node.ae_title, stored, self._peer(event))


# --- demo data ---------------------------------------------------------------------------------------

SEX = {"Female": "F", "Male": "M"}


@dataclass(frozen=True)
class DemoStudy:
    description: str
    modality: str
    n_series: int
    n_per_series: int
    days_ago: int
    accession: str
    institution: str


def _studies_for(node: DemoNode, index: int) -> list[DemoStudy]:
    if node.role == "local_pacs":
        return [
            DemoStudy("CT CHEST ABDOMEN PELVIS WITH CONTRAST", "CT", 3, 8, 20 + 7 * index, f"UHL{26100 + index:05d}",
                      "LEICESTER ROYAL INFIRMARY"),
            DemoStudy("XR CHEST", "CR", 1, 2, 200 + 30 * index, f"UHL{25100 + index:05d}", "GLENFIELD HOSPITAL"),
        ]
    return [DemoStudy("MRI HEAD", "MR", 2, 6, 10 + 5 * index, f"NUH{81000 + index:05d}", "QUEENS MEDICAL CENTRE")]


def _patient_keys(node: DemoNode, patient: dict[str, Any]) -> tuple[str, str]:
    if node.role == "local_pacs":
        return str(patient["s_number"]), "UHL"
    return remote_patient_id(str(patient["s_number"])), "NUH"


def seed(node: DemoNode, archive: Archive, folder: Path) -> int:
    """Generate the node's studies for demo patients it has not had yet; return how many."""
    marker = folder / "seeded.json"
    done = set(json.loads(marker.read_text(encoding="utf-8"))) if marker.exists() else set()
    made = 0
    today = date.today()
    for index, patient in enumerate(demo_patients()):
        s_number = str(patient["s_number"])
        if s_number in done:
            continue
        patient_id, issuer = _patient_keys(node, patient)
        patient_name = f"{str(patient['family_name']).upper()}^{str(patient['given_name']).upper()}"
        nhs = Dataset()
        nhs.PatientID = str(patient["nhs_number"])
        nhs.IssuerOfPatientID = "NHS"
        nhs.TypeOfPatientID = "TEXT"
        extra = {"SpecificCharacterSet": _charset(patient_name), "PatientSex": SEX.get(str(patient["gender"]), "O"),
                 "IssuerOfPatientID": issuer, "OtherPatientIDsSequence": [nhs]}
        for study in _studies_for(node, index):
            with tempfile.TemporaryDirectory(dir=folder) as scratch:
                files = make_study(
                    scratch, patient_id=patient_id,
                    patient_name=patient_name,
                    birth_date=patient["dob"], study_date=today - timedelta(days=study.days_ago),
                    n_series=study.n_series, n_per_series=study.n_per_series, modality=study.modality,
                    accession=study.accession, description=study.description,
                    extra={**extra, "InstitutionName": study.institution},
                )
                for path in files:  # file them as received instances are: <study>/<sop>.dcm
                    ds = dcmread(path, stop_before_pixels=True)
                    target = archive.store / str(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(path), target)
                    archive.add(target)
                    made += 1
        done.add(s_number)
        marker.write_text(json.dumps(sorted(done)), encoding="utf-8")
    return made


# --- main --------------------------------------------------------------------------------------------


def _gateway() -> tuple[str, str, int]:
    bind = os.environ.get("GATEWAY_BIND", "").strip()
    host = bind if bind and bind not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104 - compares to the wildcard to avoid it, binds nothing
    return os.environ.get("GATEWAY_AE_TITLE", "IEPDESK").strip() or "IEPDESK", host, int(
        os.environ.get("GATEWAY_PORT") or 11112)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "instance" / "demo-nodes",
                        help="where the nodes keep their files (default: instance/demo-nodes)")
    parser.add_argument("--reset", action="store_true", help="delete the nodes' files and generate them again")
    parser.add_argument("--seed-only", action="store_true", help="generate the demo studies, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)

    gateway_ae, gateway_host, gateway_port = _gateway()
    nodes = demo_nodes()
    destinations = {gateway_ae: (gateway_host, gateway_port)}
    destinations.update({n.ae_title: (n.host, n.port) for n in nodes})
    scps = []
    for node in nodes:
        folder = args.data_dir / node.ae_title
        if args.reset:
            shutil.rmtree(folder, ignore_errors=True)
        (folder / "store").mkdir(parents=True, exist_ok=True)
        archive = Archive(folder / "store").load()
        made = seed(node, archive, folder)
        if made:
            log.info("%s: generated %d demo instances in %s", node.ae_title, made, folder)
        scps.append(DemoSCP(node, archive, folder / "quarantine", destinations))
    if args.seed_only:
        return 0

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    started = []
    try:
        for scp in scps:
            try:
                started.append(scp.start())
            except OSError as exc:
                log.error("%s cannot listen on %s:%s (%s): is another copy running?", scp.node.ae_title,
                          scp.node.host, scp.node.port, exc.strerror or exc)
                return 1
        log.info("C-MOVE destinations: %s", ", ".join(f"{ae}={h}:{p}" for ae, (h, p) in destinations.items()))
        stop.wait()
    finally:
        for scp in started:
            scp.stop()
        log.info("demo nodes stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
