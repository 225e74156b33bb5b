"""Simple tokens (etcd's simple_token.go): random, unsigned, held in memory by every member.

Why every member knows every token: Authenticate proposes an
InternalAuthenticateRequest carrying a random 16-letter prefix chosen by the
member that checked the password; when the entry is applied, each member
assigns the token ``<prefix>.<entry index>`` to the user. A client can then
send the token to any member. The index suffix lets a member that has not yet
applied that entry wait for it instead of rejecting a fresh token.

Tokens expire after a TTL (5 minutes by default) that every successful use
renews. Expiry is checked on lookup and expired tokens are dropped lazily, so
no timer task is needed. Nothing here is persisted: a restarted member forgets
its tokens, as etcd does.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
TOKEN_PREFIX_LENGTH = 16
DEFAULT_TTL_SECONDS = 300.0
_PURGE_INTERVAL_SECONDS = 1.0


def gen_token_prefix() -> str:
    """16 letters from a CSPRNG: the secret part of a simple token."""
    return "".join(secrets.choice(LETTERS) for _ in range(TOKEN_PREFIX_LENGTH))


def token_index(token: str) -> int | None:
    """The raft index embedded in a well-formed simple token, None if malformed."""
    parts = token.split(".")
    if len(parts) != 2 or not parts[1].isdigit():
        return None
    return int(parts[1])


class SimpleTokenProvider:
    """token -> username with a sliding TTL; enabled only while auth is enabled."""

    def __init__(self, ttl: float = DEFAULT_TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl if ttl > 0 else DEFAULT_TTL_SECONDS
        self._clock = clock
        self._enabled = False
        self._users: dict[str, str] = {}
        self._expiry: dict[str, float] = {}
        self._last_purge = clock()

    @property
    def enabled(self) -> bool:
        return self._enabled

    def __len__(self) -> int:
        return len(self._users)

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        """Auth disabled: every token is invalid from now on."""
        self._enabled = False
        self._users.clear()
        self._expiry.clear()

    def assign(self, username: str, prefix: str, index: int) -> str:
        """Record `<prefix>.<index>` for `username` (called when the Authenticate entry applies).

        The prefix is random and the index unique per entry, so the same token can only
        come from the same entry: re-assigning it is harmless and simply renews it.
        """
        token = f"{prefix}.{index}"
        if not self._enabled:
            return token
        self._purge_expired()
        self._users[token] = username
        self._expiry[token] = self._clock() + self.ttl
        return token

    def username(self, token: str) -> str | None:
        """The token's user (renewing its TTL), or None if unknown or expired."""
        user = self._users.get(token)
        if user is None:
            return None
        now = self._clock()
        if now > self._expiry[token]:
            self._drop(token)
            return None
        self._expiry[token] = now + self.ttl
        return user

    def invalidate_user(self, username: str) -> None:
        """Password changed or user deleted: their tokens stop working at once."""
        for token in [t for t, u in self._users.items() if u == username]:
            self._drop(token)

    def _drop(self, token: str) -> None:
        self._users.pop(token, None)
        self._expiry.pop(token, None)

    def _purge_expired(self) -> None:
        """Drop expired tokens at most once a second, so abandoned tokens do not pile up."""
        now = self._clock()
        if now - self._last_purge < _PURGE_INTERVAL_SECONDS:
            return
        self._last_purge = now
        for token in [t for t, exp in self._expiry.items() if now > exp]:
            self._drop(token)
