"""Optional login: the users of ``SDPO_AUTH`` ("user:pass,user2:pass2"), checked in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from backend.settings import Settings


def make_auth(settings: Settings) -> Callable[[str, str], bool] | None:
    """A Gradio ``auth`` callable for the configured users, or None when no login is configured."""
    users = settings.users
    if not users:
        return None
    table = {u: p.encode() for u, p in users}

    def check(username: str, password: str) -> bool:
        expected = table.get(username)
        # compare even for unknown users so timing does not reveal which names exist
        ok = hmac.compare_digest(expected or b"\0" * 32, (password or "").encode())
        return ok and expected is not None

    return check
