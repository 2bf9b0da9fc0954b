"""Looking a patient up in the PAS register by S number: the request forms' autofill (issue 13.8).

A look-up is a patient search, so it is treated as one: each is audited with what was
searched for (`audit.Action.SEARCH`, as the desk's and My requests' searches are), and each
person may make only so many (`PAS_LOOKUP_WINDOWS`, default 20 in any 15 minutes and 150 in
any day), counted in Redis so that every web process sees the same counts. Redis holds no
user id: a person's key is an HMAC of it with the app's secret key. Without Redis nothing is
looked up (fail closed, as the sign-in throttle does): the requester types the details.

What the register holds is what the form shows and saves (`register_values`). Flask only;
no views here.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import time
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from flask import current_app
from redis.exceptions import RedisError

from app import audit
from app.extensions import db, redis_conn
from app.patients.models import Patient
from app.requests.validators import FieldError, clean_s_number

KEY_PREFIX = "iep:pas-lookup:"
# The register's genders the forms offer; another value (an extract's "F") is not "held":
# the form's own choice stays editable and is saved as chosen.
FORM_GENDERS = frozenset({"Female", "Male", "Other", "Unknown"})
ADDRESS_FIELDS = ("address_line1", "address_line2", "town", "county", "postcode")


class Outcome(enum.StrEnum):
    NONE = "none"  # nothing typed yet
    FOUND = "found"
    NOT_FOUND = "not_found"
    INVALID = "invalid"  # not an S number: the register is not asked
    LIMITED = "limited"  # over the look-ups a person may make
    UNAVAILABLE = "unavailable"  # Redis is down: nothing is looked up


@dataclass(frozen=True)
class Lookup:
    """What a look-up found, and the sentence the form's status line says."""

    outcome: Outcome
    message: str = ""
    s_number: str = ""
    patient: Patient | None = None

    @property
    def found(self) -> bool:
        return self.outcome == Outcome.FOUND

    @property
    def held(self) -> dict[str, object]:
        """The form fields the register fills (read-only on the form)."""
        return register_values(self.patient) if self.patient is not None else {}


def register_values(patient: Patient) -> dict[str, object]:
    """The form's patient fields the register holds for `patient`, with its values: name
    and date of birth always; the NHS number and gender when it has them; the address as a
    whole when it has one (a register address is not mixed with typed lines)."""
    values: dict[str, object] = {
        "family_name": patient.family_name,
        "given_name": patient.given_name,
        "dob": patient.dob,
    }
    if patient.nhs_number:
        values["nhs_number"] = patient.nhs_number
    if patient.gender in FORM_GENDERS:
        values["gender"] = patient.gender
    if any(getattr(patient, name) for name in ADDRESS_FIELDS):
        values.update({name: getattr(patient, name) or "" for name in ADDRESS_FIELDS})
    return values


def patient_by_s_number(s_number: str) -> Patient | None:
    """The register's row for a clean S number; not audited (the caller is)."""
    return db.session.scalar(sa.select(Patient).where(Patient.s_number == s_number))


def found_message(patient: Patient) -> str:
    return (f"Found in the PAS register: {patient.display_name}, born {patient.dob:%d/%m/%Y}. "
            "The details below are the register's; if this is not your patient, check the S number.")


def look_up(raw: str, user_id: int) -> Lookup:
    """Look `raw` up for user `user_id`: audited and counted when the register is asked.

    An empty or malformed S number asks nothing (and counts nothing). Changes the session
    (the audit row); the caller commits."""
    text = (raw or "").strip()
    if not text:
        return Lookup(Outcome.NONE)
    try:
        s_number = clean_s_number(text)
    except FieldError as exc:
        return Lookup(Outcome.INVALID, f"Not a valid S number: {exc}")
    try:
        refusal = _count_one(user_id)
    except RedisError:
        current_app.logger.exception("PAS look-up limit unavailable (Redis)")
        return Lookup(Outcome.UNAVAILABLE, "The PAS register cannot be searched just now: type the patient's "
                                           "details; they are checked against the register when you submit.",
                      s_number=s_number)
    if refusal is not None:
        if refusal.first:
            audit.record(audit.Action.SEARCH, detail=f"PAS register look-up refused (over {refusal.describe()}): "
                                                     f"{audit.criteria([('s_number', s_number)])}; further "
                                                     "refusals while it lasts are not recorded")
        return Lookup(Outcome.LIMITED, f"You have made the most PAS register look-ups allowed "
                                       f"({refusal.describe()}). Type the patient's details (they are checked "
                                       f"against the register when you submit), or try again in {refusal.wait()}.",
                      s_number=s_number)
    patient = patient_by_s_number(s_number)
    criteria = audit.criteria([("s_number", s_number)])
    if patient is None:
        audit.record(audit.Action.SEARCH, detail=f"PAS register look-up: {criteria} not found")
        return Lookup(Outcome.NOT_FOUND,
                      "Not in the PAS register: check the S number. The patient must be registered on "
                      "PatientCentre/HISS before the request is sent (guideline 2.2); type the details meanwhile.",
                      s_number=s_number)
    audit.record(audit.Action.SEARCH, detail=f"PAS register look-up: {criteria} found patient record {patient.id}")
    return Lookup(Outcome.FOUND, found_message(patient), s_number=s_number, patient=patient)


# --- The limit --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Refusal:
    count: int  # the window's limit
    seconds: int  # the window
    retry_after: int  # seconds until one look-up leaves the window
    first: bool  # the first refusal while this one lasts (audited)

    def describe(self) -> str:
        return f"{self.count} in {_span(self.seconds)}"

    def wait(self) -> str:
        return _span(self.retry_after, round_up=True)


def now() -> float:
    """The clock the limit reads (tests move it)."""
    return time.time()


# A sliding window per limit over one sorted set of the person's look-up times: drop what
# has left the longest window, refuse if any window is full (answering which, and when its
# oldest look-up leaves it), else note this look-up. Atomic, so two tabs cannot both take
# the last one. ARGV: now, a unique member, then (count, seconds) pairs.
_COUNT_SCRIPT = """
local now = tonumber(ARGV[1])
local longest = 0
for i = 3, #ARGV, 2 do
  local seconds = tonumber(ARGV[i + 1])
  if seconds > longest then longest = seconds end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - longest)
for i = 3, #ARGV, 2 do
  local limit = tonumber(ARGV[i])
  local since = now - tonumber(ARGV[i + 1])
  local n = redis.call('ZCOUNT', KEYS[1], '(' .. since, '+inf')
  if n >= limit then
    local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. since, '+inf', 'WITHSCORES', 'LIMIT', n - limit, 1)
    return {(i - 1) / 2, oldest[2]}
  end
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('EXPIRE', KEYS[1], longest)
return {0, '0'}
"""


def _key(user_id: int) -> str:
    secret = str(current_app.config["SECRET_KEY"]).encode()
    digest = hmac.new(secret, f"pas-lookup:user:{user_id}".encode(), hashlib.sha256).hexdigest()[:32]
    return f"{KEY_PREFIX}{digest}"


def _count_one(user_id: int) -> Refusal | None:
    """Count one look-up for `user_id`, or the refusal when a window is full (not counted)."""
    windows = current_app.config["IEP_SETTINGS"].pas_lookup_windows
    moment = now()
    args: list[str | int] = [repr(moment), f"{moment!r}:{uuid.uuid4().hex[:8]}"]
    for count, seconds in windows:
        args += [count, seconds]
    conn = redis_conn()
    key = _key(user_id)
    which, oldest = conn.register_script(_COUNT_SCRIPT)(keys=[key], args=args)
    if not which:
        return None
    count, seconds = windows[int(which) - 1]
    retry_after = max(1, math.ceil(float(oldest) + seconds - moment))
    first = bool(conn.set(f"{key}:refused:{seconds}", b"1", nx=True, ex=retry_after))
    return Refusal(count=count, seconds=seconds, retry_after=retry_after, first=first)


def _span(seconds: int, round_up: bool = False) -> str:
    """A window exactly (900 -> "15 minutes", 86400 -> "1 day"), or a wait rounded up to
    minutes below two hours, hours below two days, else days."""
    units = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
    if round_up:
        unit, size = ("minute", 60) if seconds < 7200 else ("hour", 3600) if seconds < 172800 else ("day", 86400)
        amount = max(1, math.ceil(seconds / size))
    else:
        unit, size = next((u, n) for u, n in units if seconds % n == 0)
        amount = seconds // size
    return f"{amount} {unit}{'s' if amount != 1 else ''}"
