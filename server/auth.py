"""Access control: API key, single-use session tokens, the ``Origin`` policy, TURN credentials.

When ``ServerConfig.api_key`` is set, an offer must carry ``Authorization: Bearer <credential>``
where the credential is the key itself (servers, native apps) or a token minted by
``POST /session-token`` (which itself needs the key). The web page never holds the key: a
backend mints a token and hands it to the page, or the person types the key once and the page
trades it for a token. Tokens are HMAC-signed with a per-process secret (or one shared by
every instance: ``--token-secret``), expire after
``ttl_s`` and open at most one session: :meth:`Authenticator.verify` checks one without
spending it, :meth:`Authenticator.spend` spends it once the session is admitted (so a refusal
at capacity leaves it usable). Every comparison is ``hmac.compare_digest`` on bytes, safe for
any input (non-ASCII included). Pure logic; clocks are arguments.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from seetalk.errors import ConfigError, Unauthorized

TOKEN_PREFIX = "stk_"


def bearer(header: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer ...`` header, or ``None``."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def same_secret(a: str, b: str) -> bool:
    """Constant-time equality of two strings, for any characters (``compare_digest`` on str
    refuses non-ASCII; on bytes it takes anything)."""
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )


@dataclass(frozen=True)
class Grant:
    """A verified credential: the API key (``nonce`` is ``None``) or a token not yet spent."""

    nonce: str | None = None
    expires: float = 0.0


class Authenticator:
    """Checks credentials. ``api_key=None`` means the server is open to anyone who can reach it.

    ``max_outstanding`` bounds the memory of spent tokens (overflow policy: forget the
    oldest spent token, which has expired by then unless tokens are minted faster than
    ``max_outstanding`` per ``ttl_s``).
    """

    def __init__(
        self,
        api_key: str | None,
        ttl_s: float = 60.0,
        max_outstanding: int = 4096,
        secret: str | None = None,
        skew: Callable[[], float] | None = None,
    ):
        """``secret``: sign tokens with a key derived from it, so every instance sharing it
        accepts tokens any of them minted (stateless instances behind a balancer; each
        instance remembers only the tokens spent on it, so a token could open one session
        per instance within its short ``ttl_s``). ``None``: a random key for this process.
        ``skew()``: wall-clock time minus the time of the ``now`` arguments, so a token's
        expiry means the same on every machine (give it with ``secret``; default 0)."""
        self.api_key = api_key
        self.ttl_s = ttl_s
        self._secret = (
            hashlib.sha256(b"seetalk session token\0" + secret.encode("utf-8")).digest()
            if secret
            else secrets.token_bytes(32)
        )
        self._skew = skew or (lambda: 0.0)
        self._spent: OrderedDict[str, float] = OrderedDict()
        self._max_spent = max_outstanding

    @property
    def required(self) -> bool:
        return self.api_key is not None

    def is_api_key(self, credential: str | None) -> bool:
        if self.api_key is None or credential is None:
            return False
        return same_secret(credential, self.api_key)

    def require_api_key(self, credential: str | None) -> None:
        """For admin routes and minting tokens: only the key itself will do."""
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
        body = f"{int((expires + self._skew()) * 1000)}.{nonce}"
        return TOKEN_PREFIX + body + "." + self._sign(body), expires

    def verify(self, credential: str | None, now: float) -> Grant:
        """The API key or an unspent, unexpired token; raises :class:`Unauthorized`.
        Spends nothing."""
        if self.api_key is None:
            return Grant()
        if credential is None:
            raise Unauthorized(
                "missing credential: send 'Authorization: Bearer <API key or session token>'"
            )
        if self.is_api_key(credential):
            return Grant()
        if not credential.startswith(TOKEN_PREFIX):
            raise Unauthorized("wrong API key")
        body, _, sig = credential[len(TOKEN_PREFIX) :].rpartition(".")
        if not body or not same_secret(sig, self._sign(body)):
            raise Unauthorized("invalid session token")
        expires_ms, _, nonce = body.partition(".")
        if not expires_ms.isascii() or not expires_ms.isdigit():
            raise Unauthorized("invalid session token")
        expires = int(expires_ms) / 1000 - self._skew()
        if now > expires:
            raise Unauthorized("session token expired: ask /session-token for a new one")
        if nonce in self._spent:
            raise Unauthorized("session token already used")
        return Grant(nonce, expires)

    def spend(self, grant: Grant, now: float) -> None:
        """Mark a verified token used (nothing for the key). Call it when the session is
        admitted, in the same step as :meth:`verify` or after re-verifying."""
        if grant.nonce is None:
            return
        if grant.nonce in self._spent:
            raise Unauthorized("session token already used")
        self._spent[grant.nonce] = grant.expires
        self._forget(now)

    def refund(self, grant: Grant) -> None:
        """Make a spent token usable again: its session never opened."""
        if grant.nonce is not None:
            self._spent.pop(grant.nonce, None)

    def check_offer(self, credential: str | None, now: float) -> None:
        """Verify and spend at once."""
        self.spend(self.verify(credential, now), now)

    def _forget(self, now: float) -> None:
        while self._spent:
            nonce, expires = next(iter(self._spent.items()))
            if expires >= now and len(self._spent) <= self._max_spent:
                break
            self._spent.popitem(last=False)

    def _sign(self, body: str) -> str:
        digest = hmac.new(self._secret, body.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()[:18]).decode().rstrip("=")


# --- origin ------------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_key(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` with the default port filled in; ``None`` when unparsable."""
    scheme = {"ws": "http", "wss": "https"}.get(scheme.lower(), scheme.lower())
    if scheme not in ("http", "https") or not netloc:
        return None
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        return None
    if not parts.hostname or parts.path or parts.query or parts.username is not None:
        return None
    return scheme, parts.hostname.lower(), port


class OriginPolicy:
    """Which web pages may open sessions: their own server's page, and an allow-list.

    ``allowed`` holds origins (``https://app.example.org``) or ``*`` for any. A request
    without an ``Origin`` header (native apps, servers, the openai client, aiortc) is not a
    browser page and passes; ``null`` and foreign origins do not. Only allow-listed origins
    get CORS headers: the page's own origin needs none.
    """

    def __init__(self, allowed: tuple[str, ...] = ()):
        self.any = "*" in allowed
        self.allowed: set[tuple[str, str, int]] = set()
        for entry in allowed:
            key = _parse_origin(entry)
            if entry != "*" and key is None:
                raise ConfigError(
                    f"allowed origin {entry!r} is not 'http(s)://host[:port]' or '*'",
                    param="allow_origins",
                )
            if key is not None:
                self.allowed.add(key)

    def listed(self, origin: str | None) -> bool:
        """Whether ``origin`` is in the allow-list (so it gets CORS headers)."""
        if origin is None:
            return False
        return self.any or _parse_origin(origin) in self.allowed

    def permits(self, origin: str | None, host: str | None, scheme: str) -> bool:
        """Whether a request with this ``Origin`` to this ``Host`` (over ``scheme``) may pass."""
        if origin is None:
            return True
        if self.listed(origin):
            return True
        if not host:
            return False
        key = _parse_origin(origin)
        if key is None:
            return False
        own = _origin_key(scheme, host)
        # behind a TLS proxy the request is http while the page is https: the same host:port
        # written the same way is still the page's own origin
        return key == own or origin.strip().lower().split("://", 1)[1] == host.strip().lower()


def _parse_origin(origin: str) -> tuple[str, str, int] | None:
    scheme, sep, netloc = origin.strip().partition("://")
    return _origin_key(scheme, netloc) if sep else None


# --- TURN --------------------------------------------------------------------------------


def turn_credentials(
    secret: str, urls: tuple[str, ...], ttl_s: float, name: str, now_unix: float
) -> dict[str, Any]:
    """An ``RTCIceServer`` for coturn's REST-API shared secret (``use-auth-secret``):
    username ``"<expiry unix time>:<name>"``, credential ``base64(HMAC-SHA1(secret, username))``.
    """
    username = f"{int(now_unix + ttl_s)}:{name}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return {
        "urls": list(urls),
        "username": username,
        "credential": base64.b64encode(digest).decode("ascii"),
    }
