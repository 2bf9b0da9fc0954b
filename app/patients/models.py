"""The PAS register: patients known to PatientCentre/HISS (guideline 2.2, 2.7 d-e)."""

from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.extensions import Model
from app.timeutil import utcnow


class Patient(Model):
    __tablename__ = "patients"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    s_number: so.Mapped[str] = so.mapped_column(sa.String(8), unique=True)
    nhs_number: so.Mapped[str | None] = so.mapped_column(sa.String(10), index=True)
    family_name: so.Mapped[str] = so.mapped_column(sa.String(80))
    given_name: so.Mapped[str] = so.mapped_column(sa.String(80))
    dob: so.Mapped[date]
    gender: so.Mapped[str] = so.mapped_column(sa.String(20), default="")
    address_line1: so.Mapped[str] = so.mapped_column(sa.String(120), default="")
    address_line2: so.Mapped[str] = so.mapped_column(sa.String(120), default="")
    town: so.Mapped[str] = so.mapped_column(sa.String(80), default="")
    county: so.Mapped[str] = so.mapped_column(sa.String(80), default="")
    postcode: so.Mapped[str] = so.mapped_column(sa.String(10), default="")
    updated_at: so.Mapped[datetime] = so.mapped_column(
        sa.DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    @property
    def display_name(self) -> str:
        return f"{self.family_name.upper()}, {self.given_name}"

    def __repr__(self) -> str:
        return f"<Patient {self.id}>"
