"""Access control: an optional API key and short-lived, single-use session tokens.

When ``ServerConfig.api_key`` is set, an offer must carry ``Authorization: Bearer <credential>``
where the credential is the key itself (servers, native apps) or a token minted by
``POST /session-token`` (which itself needs the key). The web page never holds the key: a
backend mints a token and hands it to the page, or the person types the key once and the page
trades it for a token. Tokens are HMAC-signed with a per-process secret, expire after
``ttl_s`` and open at most one session. Pure logic; the clock is an argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import OrderedDict

from seetalk.errors import Unauthorized

TOKEN_PREFIX = "stk_"


def bearer(header: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer ...`` header, or ``None``."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class Authenticator:
    """Checks credentials. ``api_key=None`` means the server is open to anyone who can reach it.

    ``max_outstanding`` bounds the memory of spent tokens (overflow policy: forget the
    oldest spent token, which has expired by then unless tokens are minted faster than
    ``max_outstanding`` per ``ttl_s``).
    """

    def __init__(self, api_key: str | None, ttl_s: float = 60.0, max_outstanding: int = 4096):
        self.api_key = api_key
        self.ttl_s = ttl_s
        self._secret = secrets.token_bytes(32)
        self._spent: OrderedDict[str, float] = OrderedDict()
        self._max_spent = max_outstanding

    @property
    def required(self) -> bool:
        return self.api_key is not None

    def is_api_key(self, credential: str | None) -> bool:
        if self.api_key is None or credential is None:
            return False
        return hmac.compare_digest(credential.encode(), self.api_key.encode())

    def require_api_key(self, credential: str | None) -> None:
        """For minting tokens: only the key itself will do."""
        if self.api_key is None:
            return
        if credential is None:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        if not self.is_api_key(credential):
            raise Unauthorized("wrong API key")

    def mint(self, now: float) -> tuple[str, float]:
        """A new token and its expiry time (same clock as ``now``)."""
        expires = now + self.ttl_s
        nonce = secrets.token_hex(8)
        body = f"{int(expires * 1000)}.{nonce}"
        return TOKEN_PREFIX + body + "." + self._sign(body), expires

    def check_offer(self, credential: str | None, now: float) -> None:
        """Admit an offer: the API key or an unspent, unexpired token. Spends the token."""
        if self.api_key is None:
            return
        if credential is None:
            raise Unauthorized(
                "missing credential: send 'Authorization: Bearer <API key or session token>'"
            )
        if self.is_api_key(credential):
            return
        if not credential.startswith(TOKEN_PREFIX):
            raise Unauthorized("wrong API key")
        body, _, sig = credential[len(TOKEN_PREFIX) :].rpartition(".")
        if not body or not hmac.compare_digest(sig, self._sign(body)):
            raise Unauthorized("invalid session token")
        expires_ms, _, nonce = body.partition(".")
        try:
            expires = int(expires_ms) / 1000
        except ValueError as exc:
            raise Unauthorized("invalid session token") from exc
        if now > expires:
            raise Unauthorized("session token expired: ask /session-token for a new one")
        if nonce in self._spent:
            raise Unauthorized("session token already used")
        self._spent[nonce] = expires
        self._forget(now)

    def _forget(self, now: float) -> None:
        while self._spent:
            nonce, expires = next(iter(self._spent.items()))
            if expires >= now and len(self._spent) <= self._max_spent:
                break
            self._spent.popitem(last=False)

    def _sign(self, body: str) -> str:
        digest = hmac.new(self._secret, body.encode(), hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")
