"""The desk as an SCU: C-ECHO, C-FIND, C-STORE (send), C-GET / C-MOVE (retrieve).

Each call opens one association of its own and closes it before returning (pynetdicom's,
through `app.dicom.ae.open_association`, for C-ECHO and C-MOVE; the desk's own for the rest:
`app.dicom.find_link.FindLink` for C-FIND, `app.dicom.store_link.StoreLink` for sending,
`app.dicom.get_link.GetLink` for a C-GET); failures come back as `DicomFailure` with the reason
in plain words. Studies are streamed instance by instance: `send_files` sends each file from
disk in PDU-sized pieces without decoding it, and a C-GET writes each arriving instance to
its file a PDU at a time as it arrives, so a worker's memory does not grow with the size of
a study.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelMove,
)

from app.dicom import convert
from app.dicom.ae import (
    DEFAULT_CONFIG,
    MAX_CONTEXTS,
    AEConfig,
    Node,
    failure_after_empty_status,
    move_contexts,
    open_association,
    verification_contexts,
)
from app.dicom.convert import UNCOMPRESSED
from app.dicom.errors import DicomFailure, status_category, to_failure
from app.dicom.find_link import FindLink
from app.dicom.get_link import Cancelled, GetLink
from app.dicom.scp import Received, valid_uid
from app.dicom.store_link import (
    PRIORITY_MEDIUM,
    AssociationLost,
    InstanceAbandoned,
    Part10,
    StoreLink,
    read_part10,
)

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
CancelCallback = Callable[[], bool]


# -- C-ECHO -------------------------------------------------------------------------------


def echo(node: Node, *, config: AEConfig = DEFAULT_CONFIG) -> float:
    """C-ECHO the node; return the round trip in milliseconds (association excluded)."""
    with open_association(node, verification_contexts(), config=config) as (assoc, watch):
        started = time.monotonic()
        status = assoc.send_c_echo()
        elapsed = time.monotonic() - started
        if "Status" not in status:
            raise failure_after_empty_status(assoc, watch, elapsed=elapsed, operation="echo")
        if status.Status != 0x0000:
            raise to_failure(status, operation="echo")
        return elapsed * 1000.0


# -- C-FIND -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudySummary:
    study_uid: str
    study_date: str
    description: str
    modalities: tuple[str, ...]
    n_instances: int | None
    accession: str
    patient_id: str
    patient_name: str
    patient_birth_date: str = ""
    n_series: int | None = None


def _literal(value: str) -> str:
    """A user-typed value for an exact-match key: no wildcards (PS3.4 C.2.2.2.4)."""
    return value.replace("*", "").replace("?", "").replace("\\", "").strip()


def _date_range(date_from: date | str | None, date_to: date | str | None) -> str:
    def fmt(value: date | str | None) -> str:
        if value is None:
            return ""
        return value.strftime("%Y%m%d") if isinstance(value, date) else value.replace("-", "")

    if date_from is None and date_to is None:
        return ""
    return f"{fmt(date_from)}-{fmt(date_to)}"  # PS3.4 C.2.2.2.5 range matching


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def find_studies(
    node: Node,
    *,
    patient_id: str | None = None,
    nhs_number: str | None = None,
    date_from: date | str | None = None,
    date_to: date | str | None = None,
    modality: str | None = None,
    description: str | None = None,
    accession: str | None = None,
    family_name: str | None = None,
    birth_date: date | None = None,
    config: AEConfig = DEFAULT_CONFIG,
) -> list[StudySummary]:
    """Study-level C-FIND (Study Root); results merged by Study Instance UID, newest first.

    Family name and date of birth (both needed): one more query, for a hospital that
    files the patient under its own id (`FAMILY*` on Patient's Name, exact birth date).

    NHS number: most PACS index only Patient ID, not Other Patient IDs, so an NHS number is
    searched *as a Patient ID* (one extra query; a PACS that files patients under their
    NHS number finds them this way). Searching Other Patient IDs Sequence is left out on
    purpose: it is optional for an SCP (PS3.4 C.6.1.1.2) and rarely matched.
    At least one criterion is required, so a slip never asks a PACS for every study.
    """
    base_keys = {
        "StudyDate": _date_range(date_from, date_to),
        "ModalitiesInStudy": _literal(modality or ""),
        "StudyDescription": f"*{_literal(description)}*" if description else "",
        "AccessionNumber": _literal(accession or ""),
    }
    ids = [_literal(v) for v in (patient_id, nhs_number) if v and _literal(v)]
    by_name = (f"{_literal(family_name)}*", birth_date.strftime("%Y%m%d")) if (
        family_name and _literal(family_name) and birth_date) else None
    if not ids and not by_name and not any(base_keys.values()):
        raise ValueError("give at least one search criterion")
    queries = []
    keys = [(pid, "", "") for pid in ids] + ([("", *by_name)] if by_name else [])
    for pid, name, born in keys or [("", "", "")]:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        query.PatientID = pid
        query.PatientName = name
        query.PatientBirthDate = born
        query.StudyTime = ""
        query.NumberOfStudyRelatedInstances = ""
        query.NumberOfStudyRelatedSeries = ""
        for keyword, value in base_keys.items():
            setattr(query, keyword, value)
        queries.append(query)

    found: dict[str, StudySummary] = {}
    with FindLink(node, config=config) as link:
        for query in queries:
            for match in link.find(query):
                uid = str(match.get("StudyInstanceUID", "") or "")
                if not uid or uid in found:
                    continue
                modalities = match.get("ModalitiesInStudy", "") or ""
                if isinstance(modalities, str):
                    modalities = [m for m in modalities.split("\\") if m]
                found[uid] = StudySummary(
                    study_uid=uid,
                    study_date=str(match.get("StudyDate", "") or ""),
                    description=str(match.get("StudyDescription", "") or ""),
                    modalities=tuple(str(m) for m in modalities),
                    n_instances=_int(match.get("NumberOfStudyRelatedInstances")),
                    accession=str(match.get("AccessionNumber", "") or ""),
                    patient_id=str(match.get("PatientID", "") or ""),
                    patient_name=str(match.get("PatientName", "") or ""),
                    patient_birth_date=str(match.get("PatientBirthDate", "") or ""),
                    n_series=_int(match.get("NumberOfStudyRelatedSeries")),
                )
    return sorted(found.values(), key=lambda s: s.study_date, reverse=True)


@dataclass(frozen=True)
class InstanceInfo:
    """One instance as a node lists it (C-FIND, IMAGE level): what the desk names it by
    when it is missing — series number and description, instance number, SOP UID."""

    series_uid: str
    sop_uid: str
    sop_class: str = ""
    series_number: str = ""
    series_description: str = ""
    instance_number: str = ""


def _list_instances(link: FindLink, study_uid: str) -> list[InstanceInfo]:
    """Every instance in a study: SERIES then IMAGE level, as the Study Root
    hierarchical model requires (PS3.4 C.4.1.3.1). The matches are read as text
    (`FindLink.find_text`): a study of 600 instances is 600 of them."""
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    query.SeriesNumber = ""
    query.SeriesDescription = ""
    series: dict[str, tuple[str, str]] = {}
    for match in link.find_text(query):
        uid = match["SeriesInstanceUID"]
        if uid:
            series[uid] = (match["SeriesNumber"], match["SeriesDescription"])
    out: list[InstanceInfo] = []
    for series_uid in sorted(series):
        number, description = series[series_uid]
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = series_uid
        query.SOPInstanceUID = ""
        query.SOPClassUID = ""
        query.InstanceNumber = ""
        for match in link.find_text(query):
            sop = match["SOPInstanceUID"]
            if sop:
                out.append(InstanceInfo(series_uid, sop, match["SOPClassUID"], number, description,
                                        match["InstanceNumber"]))
    return out


def list_instances(node: Node, study_uid: str, *, config: AEConfig = DEFAULT_CONFIG) -> list[InstanceInfo]:
    """Every instance the node holds for a study, with its series and instance numbers:
    the source's own list, which a retrieval is checked against (issue 8.2)."""
    with FindLink(node, config=config) as link:
        return _list_instances(link, study_uid)


def find_instances(node: Node, study_uid: str, *, config: AEConfig = DEFAULT_CONFIG) -> list[tuple[str, str]]:
    """(series UID, SOP Instance UID) of every instance the node holds for a study —
    to verify a delivery."""
    return [(i.series_uid, i.sop_uid) for i in list_instances(node, study_uid, config=config)]


# -- C-STORE ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailedInstance:
    sop_uid: str  # "" when the file could not even be read
    path: Path
    code: str
    plain: str
    retryable: bool


@dataclass
class SendResult:
    total: int = 0
    sent: int = 0
    bytes_sent: int = 0
    failed: list[FailedInstance] = field(default_factory=list)
    warnings: int = 0
    cancelled: bool = False
    associations: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.cancelled and self.sent == self.total

    @property
    def failed_uids(self) -> list[str]:
        return [f.sop_uid for f in self.failed]


@dataclass(frozen=True)
class _Item:
    path: Path  # the file that is sent
    part10: Part10
    origin: Path | None = None  # the caller's file, when `path` is a conversion of it

    @property
    def sop_uid(self) -> str:
        return self.part10.sop_uid

    @property
    def given(self) -> Path:
        """The path as the caller gave it (failures are reported by it)."""
        return self.origin or self.path

    @property
    def kind(self) -> tuple[str, str]:
        return self.part10.sop_class, self.part10.syntax


def _scan(paths: Iterable[Path | str]) -> list[_Item | FailedInstance]:
    """Group 0002 of each file (cheap: a few hundred bytes), in the order given; an
    unreadable file becomes a failure in its place, so that progress counts positions."""
    items: list[_Item | FailedInstance] = []
    for raw in paths:
        path = Path(raw)
        try:
            items.append(_Item(path, read_part10(path)))
        except (OSError, ValueError) as exc:  # report per file, go on (PITFALLS: pydicom)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            items.append(FailedInstance("", path, "unreadable-file", f"not a readable DICOM file ({reason})",
                                        False))
    return items


def _proposals(kinds: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], set[tuple[str, str]]]:
    """The (SOP class, transfer syntax) pairs to propose, and the kinds left out.

    Each kind in hand first (the fast path: files go as they are), then, while contexts
    are left, each SOP class in Explicit and Implicit VR Little Endian, so that a node that
    refuses a file's own syntax can still take it converted (`app.dicom.convert`)."""
    proposed = kinds[:MAX_CONTEXTS]
    left_over = set(kinds[MAX_CONTEXTS:])
    have = set(proposed)
    for sop_class in dict.fromkeys(sop for sop, _ in kinds):
        for syntax in UNCOMPRESSED:
            if len(proposed) < MAX_CONTEXTS and (sop_class, syntax) not in have:
                proposed.append((sop_class, syntax))
                have.add((sop_class, syntax))
    return proposed, left_over


def _preflight(link: StoreLink, items: list[_Item | FailedInstance]) -> tuple[dict[int, str], list[str]]:
    """After negotiation, before any C-STORE: which files need converting (index -> the
    accepted uncompressed syntax to convert to) and which cannot go at all (reasons)."""
    todo: dict[int, str] = {}
    refused: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, FailedInstance) or link.context_for(*item.kind) is not None:
            continue
        sop_class, syntax = item.kind
        accepted = link.accepted_syntaxes(sop_class)
        if not accepted:
            refused.append(f"{item.sop_uid}: the node does not accept {UID(sop_class).name} at all "
                           "(presentation contexts rejected)")
            continue
        targets = [ts for ts in UNCOMPRESSED if ts in accepted]
        reason = convert.refusal(syntax, targets or accepted)
        if reason:
            refused.append(f"{item.sop_uid}: {reason}")
        else:
            todo[i] = targets[0]
    return todo, refused


def _syntax_refused(node: Node, refused: list[str]) -> DicomFailure:
    shown = refused[:20] + ([f"and {len(refused) - 20} more"] if len(refused) > 20 else [])
    return DicomFailure(
        "syntax-refused",
        f"nothing was sent: {len(refused)} instance(s) cannot go to {node} in any transfer syntax "
        "it accepts — " + "; ".join(shown),
        False,
        failed_uids=[line.split(":", 1)[0] for line in refused],
    )


def send_files(
    node: Node,
    paths: Iterable[Path | str],
    *,
    config: AEConfig = DEFAULT_CONFIG,
    on_progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
    max_reassociations: int = 3,
    reassociate_delay: float = 1.0,
    priority: int = PRIORITY_MEDIUM,
    workdir: Path | str | None = None,
) -> SendResult:
    """C-STORE the files to `node` over one association, streaming each from disk.

    The files go as they are on disk (`app.dicom.store_link`): one presentation context
    per (SOP class, transfer syntax) in hand, plus Explicit and Implicit VR Little Endian
    for each SOP class as a fallback. After negotiation and before the first C-STORE, every
    file whose own syntax the node refused is converted to an accepted uncompressed syntax
    (`app.dicom.convert`: lossless, or a lossy image decoded and marked as lossy) into a
    temporary folder under `workdir` (the system's temp dir if None), removed afterwards;
    the association is released while converting and a new one carries the send. If any
    file cannot go in a syntax the node accepts (no context for its class, or it cannot be
    converted), nothing is sent: DicomFailure "syntax-refused" (not retryable) names each
    instance and why. A file whose syntax is accepted is never decoded.

    Per-instance failures (a failure status, no answer in time) are recorded by SOP
    Instance UID and the send goes on. If the association drops mid-way, it re-associates
    and resumes with the instance that was in flight, at most `max_reassociations` times.
    `on_progress(done, bytes_sent)` after each file, where `done` is how many of `paths`
    are dealt with, in order, failures included (so `paths[:done]` are settled: the engine
    marks instances sent by position); `should_cancel()` is polled between instances.

    Raises DicomFailure if no association can be had (first or after the retries); the
    result so far is on the exception's `partial` attribute.
    """
    items = _scan(paths)
    result = SendResult(total=len(items))
    kinds = sorted({item.kind for item in items if isinstance(item, _Item)})
    proposed, left_over = _proposals(kinds)
    index = 0
    drops = 0
    checked = False
    scratch: tempfile.TemporaryDirectory[str] | None = None

    def record(outcome: str | FailedInstance, size: int = 0) -> None:
        """The outcome of items[index]; `done` for progress is always a position in `paths`."""
        nonlocal index
        if isinstance(outcome, FailedInstance):
            result.failed.append(outcome)
        else:
            result.sent += 1
            result.bytes_sent += size
            result.warnings += outcome == "warning"
        index += 1
        if on_progress is not None:
            on_progress(index, result.bytes_sent)

    def convert_all(todo: dict[int, str], refused: list[str]) -> None:
        """Replace items[i] by its conversion; raise syntax-refused if any file cannot go
        (those in `refused` and those that fail to convert)."""
        nonlocal scratch
        if workdir is not None:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        scratch = tempfile.TemporaryDirectory(prefix="iep-convert-", dir=workdir)
        for i, target in todo.items():
            item = items[i]
            assert isinstance(item, _Item)  # noqa: S101 - narrows the type; an invariant, not a check
            out = Path(scratch.name) / f"{i:06d}.dcm"
            try:
                done = convert.convert(item.path, target, out)
                items[i] = _Item(out, read_part10(out), origin=item.path)
            except convert.CannotConvert as exc:
                refused.append(f"{item.sop_uid}: {exc.reason}")
                continue
            except (OSError, ValueError) as exc:
                refused.append(f"{item.sop_uid}: the conversion could not be written ({exc})")
                continue
            log.info("instance %d converted from %s to %s%s", i, UID(done.source_syntax).name,
                     UID(target).name, " (lossy original, marked so)" if done.lossy else "")
        if refused:
            raise _syntax_refused(node, refused)

    if not proposed:  # nothing readable to send
        for item in items:
            record(item)  # type: ignore[arg-type]  # no proposal: every item is a FailedInstance
        return result
    try:
        while index < len(items):
            try:
                with StoreLink(node, proposed, config=config) as link:
                    result.associations += 1
                    if not checked:
                        todo, refused = _preflight(link, items)
                        checked = True
                        if todo or refused:
                            # Decoding can take longer than a node waits on an idle association;
                            # and the list of what cannot go is complete, conversions included.
                            link.release()
                            convert_all(todo, refused)
                            continue
                    while index < len(items):
                        if should_cancel is not None and should_cancel():
                            result.cancelled = True
                            return result
                        item = items[index]
                        if isinstance(item, FailedInstance):
                            record(item)
                        else:
                            record(_store_one(link, item, left_over, priority), item.part10.size)
            except AssociationLost as lost:
                drops += 1
                log.warning("association to %s dropped during send (%s); attempt %d of %d",
                            node, lost.failure.code, drops, max_reassociations)
                if drops > max_reassociations:
                    lost.failure.partial = result  # type: ignore[attr-defined]  # documented extra on the exception
                    raise lost.failure from None
                time.sleep(reassociate_delay * drops)
            except InstanceAbandoned as abandoned:
                # No answer in time (or the file broke off): the peer may be stuck on this very
                # instance, so it is recorded as failed and the rest go on a new association.
                item = items[index]
                failure = abandoned.failure
                record(FailedInstance(item.sop_uid, item.given if isinstance(item, _Item) else item.path,
                                      failure.code, failure.plain, failure.retryable))
                drops += 1
                if drops > max_reassociations and index < len(items):
                    failure.partial = result  # type: ignore[attr-defined]  # documented extra on the exception
                    raise failure from None
            except DicomFailure as failure:
                if failure.code == "syntax-refused" or result.associations == 0 or \
                        not failure.retryable or drops >= max_reassociations:
                    failure.partial = result  # type: ignore[attr-defined]  # documented extra on the exception
                    raise
                drops += 1
                time.sleep(reassociate_delay * drops)
    finally:
        if scratch is not None:
            scratch.cleanup()
    return result


def _store_one(link: StoreLink, item: _Item, left_over: set[tuple[str, str]],
               priority: int) -> str | FailedInstance:
    """'ok', 'warning' or a FailedInstance for one file; raises AssociationLost or
    InstanceAbandoned when the association ends with it."""

    def failed(failure: DicomFailure) -> FailedInstance:
        return FailedInstance(item.sop_uid, item.given, failure.code, failure.plain, failure.retryable)

    if item.kind in left_over:
        return failed(DicomFailure("too-many-kinds", "more than 128 kinds of object in one "
                                   "send: send this instance separately", True))
    context_id = link.context_for(*item.kind)
    if context_id is None:
        sop_class, syntax = item.kind
        return failed(DicomFailure(
            "not-accepted",
            f"the node does not accept {UID(sop_class).name} in "
            f"{UID(syntax).name} (presentation context rejected)",
            False,
        ))
    try:
        status = link.store(item.path, item.part10, context_id, priority=priority)
    except OSError as exc:  # the file, before anything was sent: the association is intact
        return failed(DicomFailure("unreadable-file", f"cannot send the file ({exc.strerror or type(exc).__name__})",
                                   False))
    if "Status" not in status:
        return failed(to_failure(None, operation="store"))
    category = status_category(int(status.Status), "store")
    if category == "success":
        return "ok"
    if category == "warning":
        return "warning"
    return failed(to_failure(status, operation="store"))


# -- C-GET / C-MOVE -----------------------------------------------------------------------


class _Cancelled(Exception):
    """Raised between responses when the transfer was cancelled: aborts the association."""


@dataclass
class RetrieveResult:
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int = 0
    failed_uids: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    bytes_received: int = 0
    status: int | None = None
    note: str = ""
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        """The peer's final word says everything came: success, nothing failed or left."""
        return self.status == 0x0000 and self.failed == 0 and self.remaining == 0 and not self.cancelled

    def plain_outcome(self) -> str:
        """The final response in words, for a transfer's phase and failure text."""
        if self.status is None:
            return "no final response"
        text = (f"final status 0x{self.status:04X}: {self.completed} completed, {self.failed} failed, "
                f"{self.warning} with warnings, {self.remaining} remaining")
        return text + (f" ({self.note})" if self.note else "")


def _retrieve_query(study_uid: str, series_uid: str | None = None, sop_uids: list[str] | None = None) -> Dataset:
    """STUDY level; or IMAGE level with a list of SOP Instance UIDs of one series (UID
    list matching, PS3.4 C.2.2.2.2), to fetch only what is missing."""
    query = Dataset()
    query.StudyInstanceUID = study_uid
    if sop_uids:
        if not series_uid:
            raise ValueError("an IMAGE-level retrieval needs the series")
        query.QueryRetrieveLevel = "IMAGE"
        query.SeriesInstanceUID = series_uid
        query.SOPInstanceUID = list(sop_uids) if len(sop_uids) > 1 else sop_uids[0]
    else:
        query.QueryRetrieveLevel = "STUDY"
    return query


def _study_sop_classes(link: FindLink, study_uid: str) -> set[str]:
    """SOP Classes in Study (0008,0062) if the PACS computes it; else empty."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    query.SOPClassesInStudy = ""
    try:
        classes: set[str] = set()
        for match in link.find(query):
            value = match.get("SOPClassesInStudy", "") or []
            classes.update(str(v) for v in ([value] if isinstance(value, str) else value) if v)
        return classes
    except DicomFailure:
        return set()


def _responses(
    responses: Iterator[tuple[Dataset, Dataset | None]],
    result: RetrieveResult,
    operation: str,
    should_cancel: CancelCallback | None,
    no_status: Callable[[float], DicomFailure],
) -> None:
    """Follow C-GET/C-MOVE responses to the final one; fill `result`; raise on failure.
    `no_status(seconds since the last response)` says why a response came without a Status."""
    started = time.monotonic()
    for status, identifier in responses:
        if "Status" not in status:
            raise no_status(time.monotonic() - started)
        code = int(status.Status)
        category = status_category(code, operation)
        # Each response carries the running counts; the final one's are the truth (and
        # Remaining is absent there, PS3.7 C.4.3.1.4 / C.4.2.1.4: nothing remains).
        for key, attr in (("NumberOfCompletedSuboperations", "completed"), ("NumberOfFailedSuboperations", "failed"),
                          ("NumberOfWarningSuboperations", "warning"), ("NumberOfRemainingSuboperations", "remaining")):
            value = _int(status.get(key))
            if value is not None:
                setattr(result, attr, value)
        if category != "pending" and status.get("NumberOfRemainingSuboperations") is None:
            result.remaining = 0
        if category == "pending":
            started = time.monotonic()
            if should_cancel is not None and should_cancel():
                result.cancelled = True
                raise _Cancelled  # aborts the association, outside any handler
            continue
        result.status = code
        if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
            value = identifier.FailedSOPInstanceUIDList
            result.failed_uids = [str(v) for v in ([value] if isinstance(value, str) else value) if v]
        if category == "success":
            return
        if category == "warning":  # 0xB000: sub-operations complete, some failed
            if not result.failed_uids:
                result.note = "the PACS did not say which instances failed"
            return
        if category == "cancel":
            result.cancelled = True
            return
        failure = to_failure(status, operation=operation)
        failure.failed_uids = result.failed_uids
        raise failure
    raise to_failure(None, operation=operation)


def retrieve_study(
    node: Node,
    study_uid: str,
    dest_dir: Path | str | None,
    *,
    method: str = "get",
    our_node: Node | None = None,
    config: AEConfig = DEFAULT_CONFIG,
    on_progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
    series_uid: str | None = None,
    sop_uids: list[str] | None = None,
) -> RetrieveResult:
    """Fetch a study from `node` — or, with `series_uid` and `sop_uids`, only those
    instances of one series (a retry fetches only what is missing).

    method="get": C-GET over our association; each instance is written straight to
    `dest_dir/<SOP Instance UID>.dcm` as it arrives (validated, undecoded; malformed ones go
    to `dest_dir/quarantine`). `on_progress(instances, bytes)` per instance.

    method="move": C-MOVE to `our_node.ae_title` — our Storage SCP (GatewaySCP), which the
    PACS must know as a destination (else 0xA801). The instances land where that SCP
    writes; if `dest_dir` is given (normally `GatewaySCP.study_dir(study_uid)`), the files
    found there afterwards are listed in the result. `on_progress(completed, 0)` per
    pending response.

    Returns a RetrieveResult (0xB000 — some sub-operations failed — included, with the
    Failed SOP Instance UID List when the PACS sends one); raises DicomFailure for a
    failure status, a missing status (timeout/abort), or no association.
    """
    if not valid_uid(study_uid):
        raise ValueError("not a valid Study Instance UID")
    if sop_uids and not all(valid_uid(u) for u in [series_uid or "", *sop_uids]):
        raise ValueError("not a valid Series or SOP Instance UID")
    query = _retrieve_query(study_uid, series_uid, sop_uids)
    result = RetrieveResult()
    if method == "get":
        if dest_dir is None:
            raise ValueError("C-GET needs a destination directory")
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            with FindLink(node, config=config) as finder:
                classes = _study_sop_classes(finder, study_uid)
        except DicomFailure:
            classes = set()  # no C-FIND there: propose the common classes; the C-GET says the rest

        def on_store(received: Received) -> None:
            """Each C-GET sub-operation, once settled (stored, or quarantined)."""
            if received.ok and received.path is not None:
                result.files.append(received.path)
                result.bytes_received += received.meta.size_bytes if received.meta else 0
                if on_progress is not None:
                    try:
                        on_progress(len(result.files), result.bytes_received)
                    except Exception:  # noqa: BLE001
                        log.exception("on_progress failed")

        try:
            with GetLink(node, classes, config=config) as link:
                responses = link.get(query, storage_dir=dest, quarantine_dir=dest / "quarantine",
                                     on_store=on_store, should_cancel=should_cancel)
                _responses(responses, result, "get", should_cancel,
                           lambda _elapsed: to_failure(None, operation="get"))
        except (_Cancelled, Cancelled):
            result.cancelled = True
        return result

    if method != "move":
        raise ValueError('method must be "get" or "move"')
    if our_node is None:
        raise ValueError("C-MOVE needs our_node: the AE title of our Storage SCP")

    def on_move_progress() -> None:
        if on_progress is not None:
            try:
                on_progress(result.completed, 0)
            except Exception:  # noqa: BLE001
                log.exception("on_progress failed")

    def cancel_or_progress() -> bool:
        on_move_progress()
        return bool(should_cancel and should_cancel())

    try:
        with open_association(node, move_contexts(), config=config) as (assoc, watch):
            responses = assoc.send_c_move(query, our_node.ae_title,
                                          StudyRootQueryRetrieveInformationModelMove)
            _responses(responses, result, "move", cancel_or_progress,
                       lambda elapsed: failure_after_empty_status(assoc, watch, elapsed=elapsed,
                                                                  operation="move"))
    except _Cancelled:
        pass
    if dest_dir is not None and Path(dest_dir).is_dir():
        result.files = sorted(p for p in Path(dest_dir).glob("*.dcm") if p.is_file())
        result.bytes_received = sum(os.path.getsize(p) for p in result.files)
    on_move_progress()
    return result
