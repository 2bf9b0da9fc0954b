"""Where a CD's files are kept: under the storage root, by row id, never by their names."""

from __future__ import annotations

import shutil
from pathlib import Path

from flask import current_app


def cds_root() -> Path:
    root: Path = current_app.config["IEP_SETTINGS"].storage_root
    return root / "cds"


def upload_dir(upload_id: int) -> Path:
    return cds_root() / str(int(upload_id))


def file_path(upload_id: int, file_id: int) -> Path:
    """The stored bytes of one uploaded file (its CD name is only in the database)."""
    return upload_dir(upload_id) / "files" / f"{int(file_id)}.bin"


def unpacked_dir(upload_id: int) -> Path:
    """Where an uploaded .zip is extracted (under opaque names) by the scan."""
    return upload_dir(upload_id) / "unpacked"


def studies_dir(upload_id: int) -> Path:
    """Per-study folders of the instances chosen to send (links or copies), as the import
    path expects a gateway study folder."""
    return upload_dir(upload_id) / "studies"


def remove(upload_id: int) -> None:
    shutil.rmtree(upload_dir(upload_id), ignore_errors=True)
