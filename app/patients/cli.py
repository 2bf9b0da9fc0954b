"""`flask --app wsgi pas import FILE.csv`"""

from __future__ import annotations

import click
from flask.cli import AppGroup

from app import audit
from app.extensions import db
from app.patients.pas import import_rows
from app.timeutil import local_today

pas_cli = AppGroup("pas", help="The PAS register (PatientCentre/HISS extract).")


@pas_cli.command("import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False))
def import_csv(csv_file: str) -> None:
    """Import patients from a PAS CSV extract; bad rows are listed, good rows load."""
    try:
        with open(csv_file, newline="", encoding="utf-8-sig") as fh:
            report = import_rows(fh, local_today())
    except UnicodeDecodeError as exc:
        db.session.rollback()
        raise click.ClickException(f"{csv_file} is not UTF-8 text ({exc.reason})") from exc
    audit.record(
        audit.Action.PAS_IMPORT,
        actor="cli",
        detail=f"added {report.added}, updated {report.updated}, rejected {len(report.errors)}",
    )
    db.session.commit()
    for line, reason in report.errors:
        click.echo(f"line {line}: {reason}", err=True)
    click.echo(
        f"PAS import: {report.added} added, {report.updated} updated, "
        f"{len(report.errors)} rejected"
    )
    if report.errors:
        raise SystemExit(1)
