"""Jinja filters and globals shared by pages, partials and printables."""

from __future__ import annotations

from datetime import date, datetime

from flask import Flask

from app.requests.validators import format_nhs_number
from app.timeutil import as_local


def _date(value: date | datetime | None, fmt: str = "%d/%m/%Y") -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        value = as_local(value)
    return value.strftime(fmt)


def _datetime(value: datetime | None) -> str:
    if value is None:
        return ""
    return as_local(value).strftime("%d/%m/%Y %H:%M")


def _transfer_rate(transfer) -> str:  # noqa: ANN001 - a Transfer row
    """"12.3 MB/s, about 2 min left", from the row's own counters."""
    from app.timeutil import aware, utcnow

    if not transfer.started_at or not transfer.bytes_done:
        return ""
    seconds = (utcnow() - aware(transfer.started_at)).total_seconds()
    if seconds <= 0:
        return ""
    rate = transfer.bytes_done / seconds
    left = max(transfer.bytes_total - transfer.bytes_done, 0) / rate if rate else 0
    when = f"about {int(left // 60)} min {int(left % 60)} s left" if left >= 1 else "almost done"
    return f"{rate / 1048576:.1f} MB/s, {when}."


def _transfer_next_run(transfer) -> str:  # noqa: ANN001 - a Transfer row
    """"Next attempt at 14:05:30" for a queued transfer that is not due yet."""
    from app.transfers.service import next_run_at

    moment = next_run_at(transfer)
    if moment is None:
        return ""
    local = as_local(moment)
    return f"Starts at {local:%H:%M:%S}" + ("" if local.date() == as_local(datetime.now(local.tzinfo)).date()
                                           else f" on {local:%d/%m/%Y}") + "."


def _transfer_problems(transfer, limit: int = 100):  # noqa: ANN001, ANN202 - a Transfer row
    """(instances that did not make it, how many in all) for the widget (issue 8.7)."""
    from app.transfers.models import TransferState
    from app.transfers.service import problem_count, problem_items

    if transfer.state == TransferState.DELIVERED or not transfer.last_error:
        return [], 0
    return problem_items(transfer, limit=limit), problem_count(transfer)


def install_template_helpers(app: Flask) -> None:
    app.jinja_env.filters["transfer_problems"] = _transfer_problems
    app.jinja_env.filters["transfer_next_run"] = _transfer_next_run
    app.jinja_env.filters["transfer_rate"] = _transfer_rate
    app.jinja_env.filters["nhs"] = format_nhs_number
    app.jinja_env.filters["ukdate"] = _date
    app.jinja_env.filters["ukdatetime"] = _datetime
