"""The password rule (issue 11.5), after NCSC's password guidance: a minimum length, no
common or easily guessed passwords, nothing built from the user's own name or e-mail
address, and no composition rules (no "one capital, one digit, one symbol").

"Easily guessed" is zxcvbn's estimate: it knows the most common passwords of public
breaches, dictionary words, names, keyboard patterns, repeats, sequences, dates and
l33t substitutions, and takes the user's own details as extra words to guess with.
"""

from __future__ import annotations

import re

from zxcvbn import zxcvbn

MIN_LENGTH = 12
MAX_LENGTH = 200  # the sign-in form's limit
# zxcvbn's score 0-4; 3 is "safely unguessable: moderate protection from offline slow-hash
# attacks" (about 10^8 guesses), the least we accept.
MIN_SCORE = 3
# Words anyone attacking this desk tries first.
DESK_WORDS = ("uhl", "nhs", "leicester", "hospital", "radiology", "imaging", "image", "exchange", "desk", "pacs")


class WeakPassword(ValueError):
    """The password breaks the rule; the message says why and what to do instead."""


def _own_words(name: str, email: str) -> list[str]:
    """The user's names and the parts of their e-mail address before the @."""
    local = email.lower().partition("@")[0]
    words = [*re.split(r"[^a-z0-9]+", local), *re.split(r"[^a-z0-9]+", name.lower())]
    return [w for w in dict.fromkeys(words) if len(w) >= 3]


def check_password(password: str, *, name: str, email: str) -> None:
    """Refuse a weak password with WeakPassword (a message in plain words); None if good."""
    advice = "Try three or more random words, e.g. 'kettle orbit lantern'; length helps, symbols do not."
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"Use at least {MIN_LENGTH} characters. {advice}")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"Use at most {MAX_LENGTH} characters.")
    own = _own_words(name, email)
    folded = re.sub(r"[^a-z0-9]+", "", password.lower())
    if any(re.sub(r"[^a-z0-9]+", "", word) in folded for word in own):
        raise WeakPassword(f"Do not use your own name or e-mail address in the password. {advice}")
    domain = [w for w in re.split(r"[^a-z0-9]+", email.lower().partition("@")[2]) if w]
    result = zxcvbn(password, user_inputs=[*own, *domain, *DESK_WORDS])
    if result["score"] < MIN_SCORE:
        why = result["feedback"].get("warning") or "It would be guessed quickly."
        raise WeakPassword(f"This password is too easy to guess: {why.rstrip('.')}. {advice}")
