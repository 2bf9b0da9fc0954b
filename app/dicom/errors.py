"""What went wrong, in plain words: pynetdicom outcomes -> `DicomFailure`.

One entry point, `to_failure(outcome, ...)`, takes whatever an operation ended with — an
association that was not established (as an `AssociationOutcome`), a DIMSE status (an
int or the status Dataset, possibly empty), or a Python exception (connection refused,
timeout, unknown host) — and returns a `DicomFailure` carrying:

* `code`: a short stable key for logs, tests and the transfer row (`status-0xA702`,
  `rejected-called-aet`, `timeout`, `connection-refused`, ...);
* `plain`: the reason and what to do about it, for the analyst;
* `retryable`: whether trying again later can help (resources, timeouts, aborts and
  refused connections can; an unknown AE title or an unsupported SOP class cannot);
* `status`: the DIMSE status when there was one.

Sources: association rejection result/source/reason, PS3.8 9.3.4 (Table 9-21); A-ABORT
source/reason, PS3.8 9.3.8 (Table 9-26); DIMSE statuses, PS3.7 Annex C and the
service-specific ones in PS3.4 B.2.3 (Storage), C.4.1.1.4 (C-FIND), C.4.2.1.5 (C-MOVE),
C.4.3.1.4 (C-GET). Pure: no I/O here.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

__all__ = [
    "AssociationOutcome",
    "DicomFailure",
    "status_category",
    "to_failure",
]


@dataclass(eq=False)
class DicomFailure(Exception):
    """A DICOM operation failed; `plain` says why and what to do."""

    code: str
    plain: str
    retryable: bool
    status: int | None = None
    failed_uids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.plain)

    def __str__(self) -> str:
        return self.plain


@dataclass
class AssociationOutcome:
    """How an attempt to associate (or an established association) ended.

    Filled in by `app.dicom.ae.Watch` from pynetdicom's events; plain data so the mapping
    stays testable without a network.
    """

    node: str = ""  # "AET@host:port", for the message
    our_ae_title: str = ""
    connected: bool = False
    connect_error: BaseException | None = None  # what a plain TCP connect said, if it failed
    rejected: tuple[int, int, int] | None = None  # (result, source, reason), PS3.8 Table 9-21
    abort_received: tuple[int, int] | None = None  # (source, reason) of an A-ABORT from the peer
    closed_by_peer: bool = False
    no_accepted_contexts: bool = False
    timed_out: bool = False  # our ACSE/DIMSE timer ran out
    timeout_seconds: float | None = None


# -- DIMSE statuses ---------------------------------------------------------------------

def status_category(code: int, operation: str) -> str:
    """'success', 'pending', 'warning', 'cancel' or 'failure' for a status of an operation.

    0xB000 is a warning for C-STORE ("coercion of data elements", PS3.4 B.2.3) and for
    C-MOVE/C-GET ("sub-operations complete, one or more failures", PS3.4 C.4.2.1.5); the
    caller of a retrieve decides from the failed count whether that is a failure.
    """
    if code == 0x0000:
        return "success"
    if code in (0xFF00, 0xFF01):
        return "pending"
    if code == 0xFE00:
        return "cancel"
    if code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
        return "warning"
    return "failure"


def _status_failure(code: int, operation: str, comment: str = "") -> DicomFailure:
    hexcode = f"0x{code:04X}"
    said = f' (the node said: "{comment}")' if comment else ""
    key = f"status-{hexcode}"

    def fail(plain: str, retryable: bool) -> DicomFailure:
        return DicomFailure(key, plain + said, retryable, status=code)

    if operation in ("move", "get"):
        if code == 0xA801:
            return fail(
                "the move destination is unknown to the PACS (0xA801): add our AE title "
                "to the PACS's list of destinations",
                False,
            )
        if code == 0xA701:
            return fail(
                "remote out of resources (0xA701): it could not count the matches; "
                "try again later",
                True,
            )
        if code == 0xA702:
            return fail(
                "remote out of resources (0xA702): it could not send the instances; "
                "try again later, and ask the remote site if it keeps happening",
                True,
            )
        if code == 0xB000:
            return fail(
                "some instances failed to transfer (0xB000): retry to fetch the missing ones",
                True,
            )
    if 0xA700 <= code <= 0xA7FF:
        return fail(
            f"remote out of resources ({hexcode}): try again later, and ask the remote "
            "site to check its storage if it keeps happening",
            True,
        )
    if 0xA900 <= code <= 0xA9FF:
        what = "data set" if operation == "store" else "query"
        return fail(
            f"the node says the {what} does not match its SOP class ({hexcode}): "
            "it cannot take this object as sent",
            False,
        )
    if 0xC000 <= code <= 0xCFFF:
        if operation == "store":
            return fail(f"the node could not understand the data set ({hexcode})", False)
        if operation == "move":
            # Orthanc (and others built on DCMTK) answer a destination they do not know
            # with 0xC000 rather than 0xA801: the likeliest cause, said as such.
            return fail(
                f"the PACS was unable to process the move ({hexcode}); the usual cause is that "
                "our AE title is not in its list of move destinations: ask its administrator "
                "to add it (with our host and port), or retrieve with C-GET",
                False,
            )
        return fail(f"the node was unable to process the request ({hexcode})", False)
    known = {
        0x0122: ("the node does not accept this kind of object (SOP class not supported, 0x0122)", False),
        0x0124: (
            "not authorised (0x0124): the node refuses us this operation; ask its "
            "administrator to allow our AE title",
            False,
        ),
        0x0110: ("processing failure at the node (0x0110): try again later", True),
        0x0117: ("the node says the instance UID is invalid (0x0117)", False),
        0x0210: ("duplicate invocation (0x0210): the node is already handling this request", True),
        0x0211: ("the node does not support this operation (0x0211)", False),
        0x0212: ("the node says an argument was mistyped (0x0212)", False),
        0x0213: ("resource limitation at the node (0x0213): try again later", True),
        0xFE00: ("the operation was cancelled (0xFE00)", False),
    }
    if code in known:
        plain, retry = known[code]
        return fail(plain, retry)
    if status_category(code, operation) == "warning":
        return fail(f"the node answered with a warning ({hexcode})", False)
    return fail(f"the node answered with an unexpected status {hexcode}", False)


# -- associations -----------------------------------------------------------------------

_REJECT_SOURCE_USER = 1
_REJECT_SOURCE_ACSE = 2
_REJECT_SOURCE_PRESENTATION = 3

_ABORT_REASONS = {
    0: "reason not specified",
    1: "unrecognised PDU",
    2: "unexpected PDU",
    4: "unrecognised PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}


def _rejection(outcome: AssociationOutcome) -> DicomFailure:
    result, source, reason = outcome.rejected or (0, 0, 0)
    transient = result == 2  # 1 = rejected-permanent, 2 = rejected-transient
    if source == _REJECT_SOURCE_USER and reason == 7:
        return DicomFailure(
            "rejected-called-aet",
            "association rejected: called AE title not recognised — check the node's AE "
            f"title in the node register ({outcome.node})",
            False,
        )
    if source == _REJECT_SOURCE_USER and reason == 3:
        return DicomFailure(
            "rejected-calling-aet",
            "the remote node does not know our AE title (association rejected: calling "
            f"AE title {outcome.our_ae_title!r} not recognised) — ask the remote site to "
            "add us to their list of nodes",
            False,
        )
    if source == _REJECT_SOURCE_USER and reason == 2:
        return DicomFailure(
            "rejected-application-context",
            "association rejected: the node does not support the DICOM application context",
            False,
        )
    if source == _REJECT_SOURCE_ACSE and reason == 2:
        return DicomFailure(
            "rejected-protocol-version",
            "association rejected: the node does not support our protocol version",
            False,
        )
    if source == _REJECT_SOURCE_PRESENTATION and reason == 1:
        return DicomFailure(
            "rejected-congestion",
            "association rejected: the node is temporarily congested — try again later",
            True,
        )
    if source == _REJECT_SOURCE_PRESENTATION and reason == 2:
        return DicomFailure(
            "rejected-local-limit",
            "association rejected: the node has too many associations open (local limit "
            "exceeded) — try again later",
            True,
        )
    kind = "for now" if transient else "permanently"
    return DicomFailure(
        "rejected",
        f"association rejected {kind} by the node (no reason given; result {result}, "
        f"source {source}, reason {reason})"
        + (" — try again later" if transient else " — ask the remote site why"),
        transient,
    )


def _connection(outcome: AssociationOutcome) -> DicomFailure:
    error = outcome.connect_error
    where = outcome.node.split("@", 1)[-1] if outcome.node else "the node"
    if isinstance(error, ConnectionRefusedError):
        return DicomFailure(
            "connection-refused",
            f"connection refused: nothing listens on {where} — check the node is running "
            "and its port in the node register",
            True,
        )
    if isinstance(error, socket.gaierror):
        return DicomFailure(
            "unknown-host",
            f"unknown host: the name in {where} does not resolve — check the node register",
            False,
        )
    if isinstance(error, (TimeoutError, socket.timeout)):
        return _timeout(outcome.timeout_seconds, f"no TCP connection to {where}")
    if error is None:
        return DicomFailure(
            "connection-failed",
            f"could not connect to {where}, but it answers now — try again",
            True,
        )
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return DicomFailure(
        "connection-failed", f"cannot reach {where} ({reason}) — check the network path", True
    )


def _timeout(seconds: float | None, what: str = "") -> DicomFailure:
    within = f" within {seconds:g} seconds" if seconds else " in time"
    extra = f" ({what})" if what else ""
    return DicomFailure(
        "timeout",
        f"the node did not answer{within}{extra} — try again later; if it keeps happening "
        "check the node is up and not overloaded",
        True,
    )


def _association(outcome: AssociationOutcome) -> DicomFailure:
    if not outcome.connected:
        return _connection(outcome)
    if outcome.rejected:
        return _rejection(outcome)
    if outcome.no_accepted_contexts:
        return DicomFailure(
            "no-presentation-context",
            "the node accepted none of the kinds of object we proposed (no presentation "
            "context accepted) — it does not support this service or these SOP classes",
            False,
        )
    if outcome.abort_received:
        source, reason = outcome.abort_received
        who = "the node" if source == 0 else "the node's DICOM software"
        return DicomFailure(
            "aborted",
            f"{who} aborted the association ({_ABORT_REASONS.get(reason, f'reason {reason}')})"
            " — try again later",
            True,
        )
    if outcome.timed_out:
        return _timeout(outcome.timeout_seconds)
    if outcome.closed_by_peer:
        return DicomFailure(
            "connection-closed",
            "the node closed the connection without answering — try again later",
            True,
        )
    return DicomFailure(
        "association-failed", "the association ended unexpectedly — try again later", True
    )


def to_failure(
    outcome: AssociationOutcome | Dataset | int | BaseException | None,
    *,
    operation: str = "",
    node: str = "",
    timeout_seconds: float | None = None,
) -> DicomFailure:
    """Map how a DICOM operation ended to a `DicomFailure` (see the module docstring).

    `operation` is one of echo/find/move/get/store (statuses mean different things per
    service). An empty status Dataset or None means the peer sent no status: a failure,
    never a success (pynetdicom yields an empty Dataset on timeout, abort or an invalid
    response).
    """
    if isinstance(outcome, AssociationOutcome):
        return _association(outcome)
    if isinstance(outcome, DicomFailure):
        return outcome
    if isinstance(outcome, BaseException):
        if isinstance(outcome, (TimeoutError, socket.timeout)):
            return _timeout(timeout_seconds)
        return _connection(AssociationOutcome(node=node, connect_error=outcome,
                                              timeout_seconds=timeout_seconds))
    if outcome is None or (isinstance(outcome, Dataset) and "Status" not in outcome):
        return DicomFailure(
            "no-status",
            "the node sent no status: the association ended without an answer — try again",
            True,
        )
    comment = ""
    if isinstance(outcome, Dataset):
        code = int(outcome.Status)
        comment = str(outcome.get("ErrorComment", "") or "").strip()
    else:
        code = int(outcome)
    return _status_failure(code, operation, comment)
