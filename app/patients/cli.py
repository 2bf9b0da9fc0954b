"""`flask --app wsgi pas import FILE.csv`"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

import click
from flask.cli import AppGroup

from app import audit
from app.extensions import db
from app.patients.models import PasExtract
from app.patients.pas import apply_extract, check_extract
from app.timeutil import local_today, utcnow

pas_cli = AppGroup("pas", help="The PAS register (PatientCentre/HISS extract).")


@pas_cli.command("import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False))
def import_csv(csv_file: str) -> None:
    """Import patients from a PAS CSV extract; bad rows are listed, good rows load."""
    path = Path(csv_file)
    data = path.read_bytes()
    check = check_extract(data, local_today())
    if check.fatal:
        raise click.ClickException(f"{csv_file}: {check.fatal} Nothing was imported.")
    apply_extract(check)
    extract = PasExtract(
        token=secrets.token_urlsafe(32), state=PasExtract.APPLIED, file_name=path.name[:255],
        size_bytes=len(data), rows=check.rows, sha256=hashlib.sha256(data).hexdigest(), plan=check.plan,
        actor=audit.CLI, applied_at=utcnow(), added=len(check.added), updated=len(check.updated),
        unchanged=check.unchanged, rejected=check.rejected,
    )
    db.session.add(extract)
    db.session.flush()
    audit.record(audit.Action.PAS_IMPORT, actor=audit.CLI, detail=f"extract {extract.id}: {check.counts}")
    db.session.commit()
    for bad in check.errors:
        click.echo(f"line {bad.line}: {bad.message}", err=True)
    click.echo(
        f"PAS import: {len(check.added)} added, {len(check.updated)} updated, "
        f"{check.rejected} rejected; {check.unchanged} unchanged"
    )
    if check.errors:
        raise SystemExit(1)
