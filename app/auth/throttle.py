"""Brute-force protection for sign-in: per account and per client address, in Redis.

Every web process sees the same counters (Redis, not process memory). Only failed
sign-ins count, so a person who signs in correctly is never slowed down. After a few
failures each further attempt must wait a growing delay (1 s, 2 s, 4 s, ... up to 5
minutes); at `lock_at` failures the account (or address) is locked for `lock_seconds`,
which an administrator can lift earlier (`flask --app wsgi users unlock`). The lock
ends by itself because an indefinite one would let anyone who knows an on-call
radiologist's e-mail address keep them out of the trauma route.

The account counter is keyed by the e-mail address as typed (lower-cased), whether or
not such a user exists, so the answer is the same for both: the throttle cannot be used
to find out which accounts exist. Keys are an HMAC of the value with the app's secret key:
Redis holds no e-mail addresses, and two processes of one desk (same secret) share them.
Flask only; no views here.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from dataclasses import dataclass

from flask import current_app

from app.extensions import redis_conn

KEY_PREFIX = "iep:signin:"


@dataclass(frozen=True)
class Limit:
    """How many failures one account or one address may have, and what follows."""

    kind: str  # "account" or "address"
    free: int  # failures allowed without a delay
    lock_at: int  # failures that lock
    lock_seconds: int
    window_seconds: int  # a counter is forgotten this long after its last failure
    max_delay: int = 300

    def delay(self, failures: int) -> int:
        """Seconds the next attempt must wait after the last failure."""
        if failures < self.free:
            return 0
        return int(min(2 ** (failures - self.free), self.max_delay))


ACCOUNT = Limit("account", free=3, lock_at=10, lock_seconds=15 * 60, window_seconds=60 * 60)
# An address is shared by a ward's PC (several people) and is where a password spray
# across accounts comes from: more room, but a lock all the same.
ADDRESS = Limit("address", free=10, lock_at=30, lock_seconds=15 * 60, window_seconds=60 * 60)


@dataclass(frozen=True)
class Refusal:
    """Why an attempt is not even checked: a lock, or a delay not yet over."""

    locked: bool
    retry_after: int  # seconds

    @property
    def message(self) -> str:
        if self.locked:
            minutes = max(1, -(-self.retry_after // 60))
            return (
                "Sign-in is locked after too many failed attempts. Try again in "
                f"{minutes} minute{'s' if minutes != 1 else ''}, or call the service desk "
                "(x18000) to unlock it."
            )
        return (
            f"Too many failed sign-ins. Wait {self.retry_after} second"
            f"{'s' if self.retry_after != 1 else ''} and try again."
        )


# One failure, atomically: count it, note when, lock when the count reaches lock_at (unless
# already locked). Returns {count, 1 if this failure locked}.
_FAIL_SCRIPT = """
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
local now = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'last', ARGV[1])
local locked = 0
if n >= tonumber(ARGV[2]) then
  local until_ = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
  if until_ <= now then
    redis.call('HSET', KEYS[1], 'until', tostring(now + tonumber(ARGV[3])))
    locked = 1
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {n, locked}
"""


def now() -> float:
    """The clock the throttle reads (tests move it)."""
    return time.time()


def _key(limit: Limit, value: str) -> str:
    secret = str(current_app.config["SECRET_KEY"]).encode()
    digest = hmac.new(secret, f"{limit.kind}:{value}".encode(), hashlib.sha256).hexdigest()[:32]
    return f"{KEY_PREFIX}{limit.kind}:{digest}"


def _subjects(email: str, address: str) -> list[tuple[Limit, str]]:
    return [(ACCOUNT, email.strip().lower()), (ADDRESS, address or "unknown")]


def check(email: str, address: str) -> Refusal | None:
    """The refusal for an attempt on `email` from `address` now, or None to go ahead."""
    refusals: list[Refusal] = []
    moment = now()
    for limit, value in _subjects(email, address):
        state = redis_conn().hgetall(_key(limit, value))
        if not state:
            continue
        failures = int(state.get(b"n", 0))
        locked_until = float(state.get(b"until", 0))
        if locked_until > moment:
            refusals.append(Refusal(locked=True, retry_after=max(1, math.ceil(locked_until - moment))))
            continue
        ready_at = float(state.get(b"last", 0)) + limit.delay(failures)
        if ready_at > moment:
            refusals.append(Refusal(locked=False, retry_after=max(1, math.ceil(ready_at - moment))))
    if not refusals:
        return None
    return max(refusals, key=lambda r: (r.locked, r.retry_after))


def first_refusal(address: str, refusal: Refusal) -> bool:
    """True for the first refused attempt from `address` while `refusal` lasts: that one is
    audited, the rest are not, so a client hammering the sign-in page (with any e-mail
    address it likes) cannot grow the append-only audit table without bound."""
    key = _key(ADDRESS, address or "unknown") + ":refused"
    return bool(redis_conn().set(key, b"1", nx=True, ex=max(1, refusal.retry_after)))


def record_failure(email: str, address: str) -> list[Limit]:
    """Count a failed sign-in; returns the limits this failure locked (to be audited)."""
    locked: list[Limit] = []
    script = redis_conn().register_script(_FAIL_SCRIPT)
    for limit, value in _subjects(email, address):
        expiry = max(limit.window_seconds, limit.lock_seconds)
        _count, newly_locked = script(
            keys=[_key(limit, value)], args=[repr(now()), limit.lock_at, limit.lock_seconds, expiry]
        )
        if newly_locked:
            locked.append(limit)
    return locked


def record_success(email: str) -> None:
    """A correct sign-in forgets the account's failures (not the address's: one good
    account must not reset a spray across the others)."""
    redis_conn().delete(_key(ACCOUNT, email.strip().lower()))


def unlock_account(email: str) -> bool:
    """Lift the lock and forget the failures of `email`; True if there was anything."""
    return bool(redis_conn().delete(_key(ACCOUNT, email.strip().lower())))


def unlock_address(address: str) -> bool:
    """Lift the lock and forget the failures from `address`; True if there was anything."""
    key = _key(ADDRESS, address)
    return bool(redis_conn().delete(key, key + ":refused"))


@dataclass(frozen=True)
class AccountState:
    """What the throttle holds against one account, for the admin's user page (issue 14.1)."""

    failures: int
    locked_for: int  # seconds the lock still lasts; 0 when not locked


def account_state(email: str) -> AccountState:
    """The failed sign-ins counted against `email` and how long its lock still lasts."""
    state = redis_conn().hgetall(_key(ACCOUNT, email.strip().lower()))
    remaining = float(state.get(b"until", 0)) - now() if state else 0.0
    return AccountState(failures=int(state.get(b"n", 0)) if state else 0,
                        locked_for=max(0, math.ceil(remaining)))
