"""The HTTP server: web page, WebRTC signalling, health, metrics, session tokens.

``create_app`` builds the FastAPI app around a session source (or a loader that makes one in a
thread at start-up, reported by ``/healthz``); ``serve`` runs it on uvicorn with the
websockets library as its WebSocket engine. Routes (see docs/webrtc.md, docs/security.md):

- ``GET /`` the web client, ``/static/*`` its files; ``GET /config`` auth mode and URLs, and
  ICE servers (with per-session TURN credentials) for a caller holding a valid credential.
- ``POST /offer``: JSON ``{"sdp", "type"}`` -> ``{"sdp", "type", "session_id"}``, or
  ``application/sdp`` -> ``application/sdp`` (201, ``Location`` and ``X-Session-Id`` headers).
- ``POST /v1/realtime/calls`` the ``application/sdp`` form, where OpenAI Realtime clients post.
  Either with ``?resume=<token>`` (``seetalk.resume_token`` of ``session.created``) resumes a
  dropped session on the new peer connection (``Server.resume_session``).
- ``DELETE /sessions/{id}`` and ``POST /v1/realtime/calls/{id}/hangup`` end a session.
- ``POST /session-token`` a short-lived, single-use token and ICE servers (needs the API key
  when one is set).
- ``GET /healthz`` (open), ``GET /metrics`` (Prometheus text) and ``GET /sessions`` (per-peer
  stats): the last two need the API key when one is set.
- ``GET /livez`` (the process answers) and ``GET /readyz`` (models loaded, not draining), open,
  for orchestrators' liveness and readiness probes.

On SIGTERM, :func:`serve` drains: no new sessions (503 ``draining``; ``/healthz`` and
``/readyz`` answer 503), open sessions run on until they end or ``drain_timeout_s`` passes,
then the server exits. A second SIGTERM, or SIGINT, exits at once.

Every session of any transport goes through :mod:`server.admission`. Offers are checked for
origin, credential, body size (streamed against ``max_body_bytes``) and SDP
(:mod:`server.sdp`) before a slot is taken; anything aiortc still raises is a 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conversation.contract import SessionSource, TransportSession
from conversation.mcp import McpRegistry, UsesMcp
from conversation.protocol import parse_client_object
from conversation.resume import WINDOW_S, ResumeRefused, ResumeRegistry, binding
from seetalk.config import ModelConfig, ServerConfig
from seetalk.errors import ConfigError, SeetalkError, Unauthorized
from server.admission import Admission, Refused
from server.auth import Authenticator, OriginPolicy, bearer, turn_credentials
from server.metrics import Metrics
from server.sdp import SdpError, check_offer
from server.webrtc import Peer

log = logging.getLogger("seetalk.server")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
CORS_PATHS = ("/offer", "/v1/realtime/calls", "/session-token", "/config", "/sessions/")


class HttpError(Refused):
    """An error answered as ``{"error": {"type", "code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, type_: str = "invalid_request_error"):
        super().__init__(status, code, message, type_)

    def response(self) -> JSONResponse:
        return error_response(self)


def error_response(exc: Refused) -> JSONResponse:
    body = {"error": {"type": exc.type, "code": exc.code, "message": exc.message}}
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if exc.retry_after is not None:
        headers = {"Retry-After": str(exc.retry_after)}
    return JSONResponse(body, status_code=exc.status, headers=headers)


def check_offer_sdp(sdp: str) -> None:
    """:func:`server.sdp.check_offer` as an :class:`HttpError` (400)."""
    try:
        check_offer(sdp)
    except SdpError as exc:
        raise HttpError(400, exc.code, exc.message) from exc


class Server:
    """What the routes share: the admission gate and its session table, metrics, the
    authenticator, the origin policy and the ICE servers.

    ``peers`` holds every live session of any transport; each value has ``id``,
    ``async close(reason)`` and ``stats()``, and counts against ``cfg.max_sessions``.
    """

    def __init__(
        self,
        engine: SessionSource | Callable[[], SessionSource],
        server_cfg: ServerConfig,
        session_factory: Callable[[SessionSource], TransportSession] | None,
        clock: Callable[[], float],
        peer_options: dict[str, Any],
        wall: Callable[[], float] = time.time,
        resume_window_s: float = WINDOW_S,
    ):
        self.cfg = server_cfg
        # WebRTC resumption (docs/webrtc.md): a dropped peer's session waits this long
        self.resumes: ResumeRegistry[Peer] = ResumeRegistry(resume_window_s)
        self.clock = clock
        self.wall = wall
        self.metrics = Metrics()
        self.auth = Authenticator(
            server_cfg.api_key,
            secret=server_cfg.token_secret,
            # a shared token's expiry is wall-clock time, the same on every instance
            skew=(lambda: wall() - clock()) if server_cfg.token_secret else None,
        )
        self.origins = OriginPolicy(server_cfg.allow_origins)
        self.admission = Admission(
            max_sessions=server_cfg.max_sessions, auth=self.auth, metrics=self.metrics, clock=clock
        )
        self.peer_options = peer_options
        self.session_factory = session_factory or (lambda e: e.new_session(playout="paced"))
        # a loader is a callable; anything else is the source itself
        self.owns_engine = callable(engine) and not isinstance(engine, SessionSource)
        self.factory: Callable[[], SessionSource] | None = None
        if self.owns_engine:
            self.factory = cast(Callable[[], SessionSource], engine)
        else:
            self.admission.source = cast(SessionSource, engine)
        self.video_executor = ThreadPoolExecutor(2, thread_name_prefix="seetalk-video")
        self.mcp = McpRegistry(server_cfg.mcp)  # --mcp servers, started by the lifespan
        self.startup_error: str | None = None

    async def start_mcp(self) -> None:
        """Start the deployment's MCP servers (before any session); one that fails fails
        start-up with a :class:`ConfigError` naming it."""
        try:
            await self.mcp.start()
        except ConfigError as exc:
            self.startup_error = exc.message
            log.error("%s", exc.message)
            raise
        self.attach_mcp()

    def attach_mcp(self) -> None:
        """Give the session source the MCP servers (every session it opens offers them)."""
        source = self.admission.source
        if isinstance(source, UsesMcp):
            source.mcp = self.mcp
        elif source is not None and self.mcp.servers:
            log.warning("the session source %s cannot offer MCP servers", type(source).__name__)

    @property
    def peers(self) -> dict[str, Any]:
        return self.admission.peers

    @property
    def starting(self) -> int:
        return self.admission.starting

    @property
    def engine(self) -> Any:
        return self.admission.source

    @property
    def engine_error(self) -> str | None:
        return self.admission.source_error

    @property
    def status(self) -> str:
        return self.admission.status

    async def load_engine(self) -> None:
        assert self.factory is not None
        try:
            self.admission.source = await asyncio.to_thread(self.factory)
            self.attach_mcp()
            log.info("engine ready")
        except Exception as exc:
            self.admission.source_error = f"{type(exc).__name__}: {exc}"
            log.exception("engine failed to load")

    def origin_refusal(self, origin: str | None, host: str | None, scheme: str) -> str | None:
        """Why a request from this ``Origin`` is refused, or ``None`` when it may pass."""
        if self.origins.permits(origin, host, scheme):
            return None
        return (
            f"origin {str(origin)[:100]!r} may not use this server: only its own page and the "
            "origins of --allow-origin may (clients that send no Origin are not affected)"
        )

    def check_origin(self, request: Request) -> None:
        why = self.origin_refusal(
            request.headers.get("origin"), request.headers.get("host"), request.url.scheme
        )
        if why is not None:
            self.admission.refuse("origin")
            raise HttpError(403, "forbidden_origin", why)

    def ice_servers(self, name: str | None = None) -> tuple[dict[str, Any], ...]:
        """The static ICE servers, plus TURN credentials minted for ``name`` (a session id;
        random when ``None``) when a TURN secret is configured."""
        servers = tuple(dict(s) for s in self.cfg.ice_servers)
        if self.cfg.turn_secret and self.cfg.turn_urls:
            turn = turn_credentials(
                self.cfg.turn_secret,
                self.cfg.turn_urls,
                self.cfg.turn_ttl_s,
                name or secrets.token_hex(8),
                self.wall(),
            )
            servers += (turn,)
        return servers

    async def open_session(
        self, sdp: str, initial: dict[str, Any] | None, credential: str | None = None
    ) -> tuple[Peer, str]:
        """Admit, start a session and its peer, answer the offer. Raises :class:`Refused`."""
        async with self.admission.reserve(credential) as slot:
            session = self.session_factory(slot.source)
            try:
                await session.start()
                peer = Peer(
                    session,
                    metrics=self.metrics,
                    ice_servers=self.ice_servers(session.id),
                    idle_timeout_s=self.cfg.idle_timeout_s,
                    video_executor=self.video_executor,
                    clock=self.clock,
                    **self.peer_options,
                )
            except BaseException:
                await session.aclose()
                raise
            if self.resumes.window_s > 0:  # its session.created carries a resume token
                peer.resumes = self.resumes
                peer.bound_to = binding(
                    credential,
                    is_token=credential is not None and not self.auth.is_api_key(credential),
                )
            try:
                if initial:  # through the one parser, as if sent on the data channel
                    await session.handle_client_event(
                        parse_client_object({"type": "session.update", "session": initial})
                    )
                answer = await peer.accept(sdp)
            except Exception as exc:
                await peer.close("rejected")  # the session and its connection, nothing leaks
                slot.reason = "bad_sdp"
                raise _offer_error(exc) from exc
            except BaseException:
                await peer.close("rejected")
                raise
            slot.admit(peer)
            return peer, answer

    async def resume_session(
        self, sdp: str, token: str, credential: str | None
    ) -> tuple[Peer, str]:
        """A new peer connection for the session of resume ``token``: the same session (a
        slot it never gave up), its tracks and data channel attached to it. Raises
        :class:`HttpError`: 401 (credential), 404 (unknown or used token), 410 (expired),
        403 (another credential than the one that opened the session), 400 (bad SDP:
        the session ends)."""
        now = self.clock()
        grant = self.auth.verify(credential, now)  # Unauthorized -> 401
        try:
            bound = binding(credential, is_token=grant.nonce is not None)
            peer = self.resumes.claim(token, bound, now)
        except ResumeRefused as exc:
            self.admission.refuse(exc.code)
            raise HttpError(exc.status, exc.code, exc.message) from exc
        self.auth.spend(grant, now)
        try:
            answer = await peer.resume(sdp)
        except ConnectionError as exc:
            raise HttpError(410, "resume_token_expired", "the session ended") from exc
        except Exception as exc:
            raise _offer_error(exc) from exc
        return peer, answer

    async def close_all(self) -> None:
        await self.admission.close_all()

    async def drain(self, timeout_s: float) -> None:
        """Stop admitting sessions and wait until the open ones end, at most ``timeout_s``
        (those still open are closed by the shutdown that follows). Cancelling it is safe."""
        self.admission.draining = True
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        log.info("draining: %d session(s) open, up to %g s", len(self.peers), timeout_s)
        while (self.peers or self.starting) and loop.time() < end:
            await asyncio.sleep(0.1)
        log.info("drained: %d session(s) still open are closed now", len(self.peers))


def _offer_error(exc: Exception) -> HttpError:
    if isinstance(exc, SeetalkError):
        return HttpError(400, exc.code, exc.message, exc.type)
    log.info("offer rejected by aiortc: %r", exc)
    detail = str(exc) or type(exc).__name__
    return HttpError(400, "invalid_sdp", f"the offer was rejected: {detail[:200]}")


class CorsMiddleware:
    """CORS as a policy: only origins of the allow-list get CORS headers, on the signalling
    paths; their preflight (``OPTIONS``) is answered here. Everyone else gets none."""

    def __init__(self, app: ASGIApp, origins: OriginPolicy):
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(CORS_PATHS):
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if not self.origins.listed(origin):
            await self.app(scope, receive, send)
            return
        assert origin is not None
        allow = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"vary", b"Origin"),
        ]
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            headers = allow + [
                (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
                (b"access-control-allow-headers", b"Authorization, Content-Type"),
                (b"access-control-max-age", b"600"),
                (b"content-length", b"0"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        expose = (b"access-control-expose-headers", b"Location, X-Session-Id")

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), *allow, expose]
            await send(message)

        await self.app(scope, receive, send_with_cors)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit``: a declared
    ``Content-Length`` is checked first, then the bytes are counted as they stream in.
    Nothing past the limit is kept: once the 413 is sent, uvicorn drops what the client
    still sends (closing instead would reset the connection under the client's answer)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise HttpError(413, "body_too_large", f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "body_too_large", f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    engine: SessionSource | Callable[[], SessionSource],
    server_cfg: ServerConfig | None = None,
    session_factory: Callable[[SessionSource], TransportSession] | None = None,
    *,
    web_dir: Path = WEB_DIR,
    clock: Callable[[], float] = time.monotonic,
    peer_options: dict[str, Any] | None = None,
    realtime_ws: bool = True,
    resume_window_s: float | None = None,
) -> FastAPI:
    """The app around a :class:`~conversation.contract.SessionSource`, or a loader that
    returns one (run in a thread at start-up).

    ``session_factory(source)`` makes a WebRTC session (default: ``source.new_session(
    playout="paced")``); ``peer_options`` go to :class:`~server.webrtc.Peer` (timeouts, video
    rate). ``realtime_ws`` adds the OpenAI Realtime WebSocket route of ``server.realtime_ws``.
    A dropped session of either transport waits ``resume_window_s`` (default: the config's
    ``--resume-window``) for its client (0: it ends at once).
    """
    cfg = server_cfg or ServerConfig()
    if resume_window_s is None:
        resume_window_s = cfg.resume_window_s
    state = Server(
        engine, cfg, session_factory, clock, peer_options or {}, resume_window_s=resume_window_s
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start_mcp()  # --mcp servers first: one that fails fails start-up
        loader = asyncio.create_task(state.load_engine()) if state.owns_engine else None
        try:
            yield
        finally:
            await state.close_all()
            await state.mcp.aclose()
            if loader is not None and not loader.done():
                loader.cancel()  # the loading thread finishes on its own
            if state.owns_engine and state.engine is not None and hasattr(state.engine, "aclose"):
                await state.engine.aclose()
            state.video_executor.shutdown(wait=False, cancel_futures=True)

    docs = cfg.docs
    app = FastAPI(
        title="seetalk",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.seetalk = state
    app.add_middleware(CorsMiddleware, origins=state.origins)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return error_response(HttpError(401, exc.code, exc.message))

    def credential_of(request: Request) -> str | None:
        return bearer(request.headers.get("authorization"))

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(web_dir / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=web_dir), name="static")

    @app.get("/config")
    async def config(request: Request) -> dict[str, Any]:
        """Public: auth mode and URLs. ICE servers (TURN credentials) only for a caller with
        a valid key or unspent token, or for anyone when the server has no key."""
        body: dict[str, Any] = {
            "auth_required": state.auth.required,
            "token_url": "/session-token",
            "offer_url": "/offer",
        }
        try:
            state.auth.verify(credential_of(request), clock())
        except Unauthorized:
            return body
        body["ice_servers"] = list(state.ice_servers())
        body["max_sessions"] = cfg.max_sessions
        return body

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        body = {
            "status": state.status,
            "sessions": len(state.peers),
            "max_sessions": cfg.max_sessions,
        }
        if state.engine_error:
            body["error"] = state.engine_error
        load, verdict = state.admission.load()  # queue depth per model role, capacity
        if verdict is not None:
            body["load"] = {
                "overloaded": verdict.overloaded,
                "reason": verdict.reason or None,
                "capacity_estimate": verdict.capacity,
                "utilisation": {r: round(u, 3) for r, u in verdict.utilisation.items()},
                "roles": load,
            }
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = state.status == "ready"
        return JSONResponse({"status": state.status}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> PlainTextResponse:
        state.auth.require_api_key(credential_of(request))
        load, verdict = state.admission.load()
        text = state.metrics.render(
            {"seetalk_engine_ready": float(state.status == "ready")},
            load=load,
            utilisation=verdict.utilisation if verdict else None,
            capacity=verdict.capacity if verdict else None,
            overloaded=verdict.overloaded if verdict else None,
            asr=_asr_stats(state.engine),
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/session-token")
    async def session_token(request: Request) -> dict[str, Any]:
        state.check_origin(request)
        state.auth.require_api_key(credential_of(request))
        token, expires = state.auth.mint(clock())
        ttl = expires - clock()
        return {
            "token": token,
            "expires_in": round(ttl, 3),
            "expires_at": round(time.time() + ttl, 3),
            "ice_servers": list(state.ice_servers()),
        }

    @app.get("/sessions")
    async def sessions(request: Request) -> dict[str, Any]:
        state.auth.require_api_key(credential_of(request))
        return {"sessions": [p.stats() for p in state.peers.values()]}

    async def offer(request: Request, *, allow_json: bool) -> Response:
        state.check_origin(request)
        credential = credential_of(request)
        try:
            state.auth.verify(credential, clock())  # fail fast; spent only once admitted
        except Unauthorized:
            state.admission.refuse("unauthorized")
            raise
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        initial: dict[str, Any] | None = None
        if ctype not in ("application/sdp", "application/json") or (
            ctype == "application/json" and not allow_json
        ):
            accepted = "application/json or application/sdp" if allow_json else "application/sdp"
            raise HttpError(
                415,
                "unsupported_media_type",
                f"content type {ctype or '(none)'!r} is not supported: send {accepted}",
            )
        body = await read_body(request, cfg.max_body_bytes)
        if ctype == "application/sdp":
            sdp, as_json = _text(body), False
        else:
            sdp, initial = _json_offer(body)
            as_json = True
        try:
            check_offer_sdp(sdp)
        except HttpError:
            state.admission.refuse("bad_sdp")
            raise
        token = request.query_params.get("resume")
        if token is not None:  # a dropped session's client is back (docs/webrtc.md)
            if initial:
                raise HttpError(
                    400,
                    "invalid_request",
                    "a resuming offer keeps the session's settings: send no 'session'",
                )
            peer, answer = await state.resume_session(sdp, token, credential)
        else:
            peer, answer = await state.open_session(sdp, initial, credential)
        if as_json:
            return JSONResponse(
                {"sdp": answer, "type": "answer", "session_id": peer.id},
                headers={"X-Session-Id": peer.id},  # balancers route hang-ups by it
            )
        return Response(
            answer,
            status_code=201,
            media_type="application/sdp",
            headers={"Location": f"/sessions/{peer.id}", "X-Session-Id": peer.id},
        )

    @app.post("/offer")
    async def post_offer(request: Request) -> Response:
        return await offer(request, allow_json=True)

    @app.post("/v1/realtime/calls")
    async def post_call(request: Request) -> Response:
        return await offer(request, allow_json=False)

    async def hangup(request: Request, session_id: str) -> Response:
        state.check_origin(request)
        credential = credential_of(request)
        if state.auth.required and not state.auth.is_api_key(credential):
            raise Unauthorized("ending a session needs the API key")
        peer = state.peers.get(session_id)
        if peer is None:
            raise HttpError(404, "not_found", f"no session {session_id[:100]!r}")
        await peer.close("hangup")
        return Response(status_code=204)

    @app.delete("/sessions/{session_id}")
    async def delete_session(request: Request, session_id: str) -> Response:
        return await hangup(request, session_id)

    @app.post("/v1/realtime/calls/{session_id}/hangup")
    async def post_hangup(request: Request, session_id: str) -> Response:
        return await hangup(request, session_id)

    if realtime_ws:
        from server.realtime_ws import add_realtime_routes

        add_realtime_routes(app, resume_window_s=resume_window_s)
    return app


def _asr_stats(source: Any) -> dict[str, dict[str, int]] | None:
    """Whisper decode counts of the loaded engine (``Sessions.engine``), if it has any."""
    stats = getattr(getattr(source, "engine", None), "asr_stats", None)
    return stats() if callable(stats) else None


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HttpError(400, "invalid_sdp", "the offer SDP is not UTF-8 text") from exc


def _json_offer(body: bytes) -> tuple[str, dict[str, Any] | None]:
    import json

    try:
        data = json.loads(body or b"null")
    except (ValueError, RecursionError) as exc:
        raise HttpError(400, "invalid_json", f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise HttpError(400, "invalid_json", 'send a JSON object {"sdp": ..., "type": "offer"}')
    sdp, kind = data.get("sdp"), data.get("type", "offer")
    if not isinstance(sdp, str):
        raise HttpError(400, "invalid_sdp", "'sdp' must be a string holding the offer")
    if kind != "offer":
        raise HttpError(400, "invalid_sdp", f"'type' must be 'offer', not {str(kind)[:40]!r}")
    session = data.get("session")
    if session is not None and not isinstance(session, dict):
        raise HttpError(400, "invalid_json", "'session' must be an object (session.update fields)")
    return sdp, session


def serve(model_cfg: ModelConfig, server_cfg: ServerConfig, *, log_level: str = "info") -> None:
    """Load the engine in the background and serve until interrupted (SIGTERM drains)."""
    if bool(server_cfg.certfile) != bool(server_cfg.keyfile):
        raise ConfigError("HTTPS needs both a certificate file and a key file", param="certfile")

    def load() -> Any:
        from conversation.session import Sessions  # heavy imports happen in the loading thread
        from models.engine import Engine

        return Sessions(Engine.load(model_cfg), server_cfg.tools)  # built-ins: --tools

    app = create_app(load, server_cfg)
    scheme = "https" if server_cfg.certfile else "http"
    log.info("seetalk on %s://%s:%s", scheme, server_cfg.host, server_cfg.port)
    config = uvicorn.Config(
        app,
        host=server_cfg.host,
        port=server_cfg.port,
        ws="websockets-sansio",
        ws_max_size=server_cfg.max_ws_message_bytes,
        ssl_certfile=server_cfg.certfile,
        ssl_keyfile=server_cfg.keyfile,
        log_level=log_level,
    )
    server = _DrainingServer(config, app.state.seetalk, server_cfg.drain_timeout_s)
    server.run()
    if not server.started:  # the lifespan failed (an --mcp server, say): said above
        raise ConfigError(app.state.seetalk.startup_error or "the server did not start")


class _DrainingServer(uvicorn.Server):
    """uvicorn whose first SIGTERM drains (:meth:`Server.drain`) before it exits."""

    def __init__(self, config: uvicorn.Config, state: Server, timeout_s: float) -> None:
        super().__init__(config)
        self.state, self.timeout_s = state, timeout_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self.drainer: asyncio.Task[None] | None = None

    async def startup(self, sockets: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if sig == signal.SIGTERM and self.drainer is None and self.loop is not None:
            self.loop.call_soon_threadsafe(self._start_drain)  # from the signal handler
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        if self.drainer is None:
            self.drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await self.state.drain(self.timeout_s)
        finally:
            self.should_exit = True


__all__ = [
    "HttpError",
    "SeetalkError",
    "check_offer_sdp",
    "create_app",
    "read_body",
    "serve",
]
