"""The status vocabulary (DESIGN "Requests, statuses and rules"; Appendix 1 "Statuses")."""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    NEW = "New"
    AWAITING_DETAILS = "Awaiting Details"
    # The CD round (Appendix 5; issue 12.5): handed in at a Radiology Reception, collected
    # on the round, its contents uploaded. CD imports only (CD_ONLY).
    AWAITING_DROP_OFF = "Awaiting Drop-off"
    COLLECTED = "Collected"
    UPLOADED = "Uploaded"
    ACCEPTED = "Accepted"
    DOWNLOAD_REQUEST = "Download Request"
    DOWNLOADING = "Downloading"
    UPLOADING = "Uploading"
    ON_IEP = "On IEP"
    DELIVERED = "Delivered"
    COMPLETED = "Completed"
    DECLINED = "Declined"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    PURGED = "Purged"

    @property
    def css(self) -> str:
        """A CSS class name for the status badge."""
        return "status-" + self.value.lower().replace(" ", "-")


# Statuses only a CD import can be in: the machine refuses them for any other kind.
CD_ONLY: frozenset[Status] = frozenset({Status.AWAITING_DROP_OFF, Status.COLLECTED, Status.UPLOADED})


class Priority(enum.StrEnum):
    BLUE_LIGHT = "Blue Light"
    STANDARD = "Standard"
    BATCH = "Batch"


class Kind(enum.StrEnum):
    IMPORT = "import"
    EXPORT = "export"
    CD = "cd"
    TRAUMA = "trauma"

    @property
    def label(self) -> str:
        return {
            "import": "Import",
            "export": "Export",
            "cd": "CD import",
            "trauma": "Trauma transfer",
        }[self.value]

    @property
    def appendix(self) -> str:
        return {
            "import": "Appendix 2",
            "export": "Appendix 3",
            "cd": "Appendix 6",
            "trauma": "Appendix 4",
        }[self.value]
