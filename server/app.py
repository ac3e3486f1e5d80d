"""The HTTP server: web page, WebRTC signalling, health, metrics, session tokens.

``create_app`` builds the FastAPI app around a loaded engine (or a factory that loads one in a
thread at start-up, reported by ``/healthz``); ``serve`` runs it on uvicorn with the
websockets library as its WebSocket engine. Routes (see docs/webrtc.md):

- ``GET /`` the web client, ``/static/*`` its files, ``GET /config`` ICE servers and auth mode.
- ``POST /offer``: JSON ``{"sdp", "type"}`` -> ``{"sdp", "type", "session_id"}``, or
  ``application/sdp`` -> ``application/sdp`` (201, ``Location`` and ``X-Session-Id`` headers).
- ``POST /v1/realtime/calls`` the ``application/sdp`` form, where OpenAI Realtime clients post.
- ``DELETE /sessions/{id}`` and ``POST /v1/realtime/calls/{id}/hangup`` end a session.
- ``POST /session-token`` a short-lived, single-use token (needs the API key when one is set).
- ``GET /healthz``, ``GET /metrics`` (Prometheus text), ``GET /sessions`` (per-peer stats).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from conversation.contract import SessionSource
from seetalk.config import ModelConfig, ServerConfig
from seetalk.errors import ConfigError, SeetalkError, Unauthorized
from server.auth import Authenticator, bearer
from server.metrics import Metrics
from server.webrtc import Peer

log = logging.getLogger("seetalk.server")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MAX_SDP_BYTES = 64 * 1024


class HttpError(Exception):
    """An error answered as ``{"error": {"type", "code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.code, self.message, self.type = status, code, message, type_

    def response(self) -> JSONResponse:
        body = {"error": {"type": self.type, "code": self.code, "message": self.message}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def check_offer_sdp(sdp: str) -> None:
    """Cheap checks before aiortc sees the offer; raises :class:`HttpError` (400)."""
    if not sdp.strip():
        raise HttpError(400, "invalid_sdp", "the offer SDP is empty")
    if len(sdp) > MAX_SDP_BYTES:
        raise HttpError(400, "invalid_sdp", f"the offer SDP is larger than {MAX_SDP_BYTES} bytes")
    if not sdp.lstrip().startswith("v=0"):
        raise HttpError(400, "invalid_sdp", "not an SDP offer: it must start with 'v=0'")
    audio = [line for line in sdp.splitlines() if line.startswith("m=audio ")]
    if not audio or all(line.split()[1:2] == ["0"] for line in audio):
        raise HttpError(
            400,
            "no_audio",
            "the offer has no audio: add a microphone track or an audio "
            "transceiver (the assistant answers with audio)",
        )


class Server:
    """What the routes share: the engine, the live sessions, metrics and the authenticator.

    ``peers`` holds every live session of any transport; each value has ``id``,
    ``async close(reason)`` and ``stats()``, and counts against ``cfg.max_sessions``.
    """

    def __init__(
        self,
        engine: Any,
        server_cfg: ServerConfig,
        session_factory: Callable[[Any], Any] | None,
        clock: Callable[[], float],
        peer_options: dict[str, Any],
    ):
        self.cfg = server_cfg
        self.clock = clock
        self.metrics = Metrics()
        self.auth = Authenticator(server_cfg.api_key)
        self.peers: dict[str, Any] = {}
        self.starting = 0
        self.peer_options = peer_options
        self.session_factory = session_factory or (lambda e: e.new_session(playout="paced"))
        self.owns_engine = not isinstance(engine, SessionSource)
        self.engine: Any = None if self.owns_engine else engine
        self.factory: Callable[[], Any] | None = engine if self.owns_engine else None
        self.engine_error: str | None = None
        self.video_executor = ThreadPoolExecutor(2, thread_name_prefix="seetalk-video")

    @property
    def status(self) -> str:
        if self.engine is not None:
            return "ready"
        return "failed" if self.engine_error else "loading"

    async def load_engine(self) -> None:
        assert self.factory is not None
        try:
            self.engine = await asyncio.to_thread(self.factory)
            log.info("engine ready")
        except Exception as exc:
            self.engine_error = f"{type(exc).__name__}: {exc}"
            log.exception("engine failed to load")

    async def open_session(self, sdp: str, initial: dict[str, Any] | None) -> tuple[Peer, str]:
        if self.engine is None:
            state = "failed to load: " + self.engine_error if self.engine_error else "loading"
            raise HttpError(
                503, "not_ready", f"the models are {state}; see /healthz", "server_error"
            )
        if len(self.peers) + self.starting >= self.cfg.max_sessions:
            self.metrics.session_rejected("capacity")
            raise HttpError(
                503,
                "session_limit",
                f"the server holds its maximum of "
                f"{self.cfg.max_sessions} sessions; try again later",
                "server_error",
            )
        self.starting += 1
        try:
            session = self.session_factory(self.engine)
            await session.start()
            peer = Peer(
                session,
                metrics=self.metrics,
                ice_servers=self.cfg.ice_servers,
                idle_timeout_s=self.cfg.idle_timeout_s,
                video_executor=self.video_executor,
                clock=self.clock,
                **self.peer_options,
            )
            try:
                if initial:
                    await session.handle_client_event(
                        {"type": "session.update", "session": initial}
                    )
                answer = await peer.accept(sdp)
            except BaseException as exc:
                await peer.close("rejected")
                if isinstance(exc, ValueError):
                    self.metrics.session_rejected("bad_sdp")
                    raise HttpError(400, "invalid_sdp", f"the offer was rejected: {exc}") from exc
                raise
            self.peers[peer.id] = peer
            self.metrics.session_started()
            peer.on_closed.append(self._forget)
            return peer, answer
        finally:
            self.starting -= 1

    def _forget(self, peer: Peer) -> None:
        if self.peers.pop(peer.id, None) is not None:
            self.metrics.session_ended(peer.close_reason or "closed")

    async def close_all(self) -> None:
        await asyncio.gather(
            *(p.close("server_shutdown") for p in list(self.peers.values())), return_exceptions=True
        )


def create_app(
    engine: Any,
    server_cfg: ServerConfig | None = None,
    session_factory: Callable[[Any], Any] | None = None,
    *,
    web_dir: Path = WEB_DIR,
    clock: Callable[[], float] = time.monotonic,
    peer_options: dict[str, Any] | None = None,
    realtime_ws: bool = True,
) -> FastAPI:
    """The app around ``engine`` (has ``new_session``) or a factory that loads one in a thread.

    ``session_factory(engine)`` makes a session (default: ``engine.new_session(playout=
    "paced")``); ``peer_options`` go to :class:`~server.webrtc.Peer` (timeouts, video rate).
    ``realtime_ws`` adds the OpenAI Realtime WebSocket route of ``server.realtime_ws``.
    """
    cfg = server_cfg or ServerConfig()
    state = Server(engine, cfg, session_factory, clock, peer_options or {})

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(state.load_engine()) if state.owns_engine else None
        try:
            yield
        finally:
            await state.close_all()
            if loader is not None and not loader.done():
                loader.cancel()  # the loading thread finishes on its own
            if state.owns_engine and state.engine is not None and hasattr(state.engine, "aclose"):
                await state.engine.aclose()
            state.video_executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="seetalk", lifespan=lifespan)
    app.state.seetalk = state

    @app.exception_handler(HttpError)
    async def _http_error(request: Request, exc: HttpError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        state.metrics.session_rejected("unauthorized")
        return HttpError(401, exc.code, exc.message).response()

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(web_dir / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=web_dir), name="static")

    @app.get("/config")
    async def config() -> dict[str, Any]:
        return {
            "ice_servers": list(cfg.ice_servers),
            "auth_required": state.auth.required,
            "token_url": "/session-token",
            "offer_url": "/offer",
            "max_sessions": cfg.max_sessions,
        }

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        body = {
            "status": state.status,
            "sessions": len(state.peers),
            "max_sessions": cfg.max_sessions,
        }
        if state.engine_error:
            body["error"] = state.engine_error
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        text = state.metrics.render({"seetalk_engine_ready": float(state.status == "ready")})
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/session-token")
    async def session_token(request: Request) -> dict[str, Any]:
        state.auth.require_api_key(bearer(request.headers.get("authorization")))
        token, expires = state.auth.mint(clock())
        ttl = expires - clock()
        return {
            "token": token,
            "expires_in": round(ttl, 3),
            "expires_at": round(time.time() + ttl, 3),
        }

    @app.get("/sessions")
    async def sessions(request: Request) -> dict[str, Any]:
        state.auth.require_api_key(bearer(request.headers.get("authorization")))
        return {"sessions": [p.stats() for p in state.peers.values()]}

    async def offer(request: Request, *, allow_json: bool) -> Response:
        state.auth.check_offer(bearer(request.headers.get("authorization")), clock())
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await request.body()
        initial: dict[str, Any] | None = None
        if ctype == "application/sdp":
            sdp, as_json = _text(body), False
        elif ctype == "application/json" and allow_json:
            sdp, initial = _json_offer(body)
            as_json = True
        else:
            accepted = "application/json or application/sdp" if allow_json else "application/sdp"
            raise HttpError(
                415,
                "unsupported_media_type",
                f"content type {ctype or '(none)'!r} is not supported: send {accepted}",
            )
        check_offer_sdp(sdp)
        peer, answer = await state.open_session(sdp, initial)
        if as_json:
            return JSONResponse({"sdp": answer, "type": "answer", "session_id": peer.id})
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
        credential = bearer(request.headers.get("authorization"))
        if state.auth.required and not state.auth.is_api_key(credential):
            raise Unauthorized("ending a session needs the API key")
        peer = state.peers.get(session_id)
        if peer is None:
            raise HttpError(404, "not_found", f"no session {session_id!r}")
        await peer.close("hangup")
        return Response(status_code=204)

    @app.delete("/sessions/{session_id}")
    async def delete_session(request: Request, session_id: str) -> Response:
        return await hangup(request, session_id)

    @app.post("/v1/realtime/calls/{session_id}/hangup")
    async def post_hangup(request: Request, session_id: str) -> Response:
        return await hangup(request, session_id)

    if realtime_ws:
        try:
            from server.realtime_ws import add_realtime_routes
        except ImportError:
            log.warning("server.realtime_ws is missing: no WebSocket API")
        else:
            add_realtime_routes(app)
    return app


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HttpError(400, "invalid_sdp", "the offer SDP is not UTF-8 text") from exc


def _json_offer(body: bytes) -> tuple[str, dict[str, Any] | None]:
    import json

    try:
        data = json.loads(body or b"null")
    except ValueError as exc:
        raise HttpError(400, "invalid_json", f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise HttpError(400, "invalid_json", 'send a JSON object {"sdp": ..., "type": "offer"}')
    sdp, kind = data.get("sdp"), data.get("type", "offer")
    if not isinstance(sdp, str):
        raise HttpError(400, "invalid_sdp", "'sdp' must be a string holding the offer")
    if kind != "offer":
        raise HttpError(400, "invalid_sdp", f"'type' must be 'offer', not {kind!r}")
    session = data.get("session")
    if session is not None and not isinstance(session, dict):
        raise HttpError(400, "invalid_json", "'session' must be an object (session.update fields)")
    return sdp, session


def serve(model_cfg: ModelConfig, server_cfg: ServerConfig, *, log_level: str = "info") -> None:
    """Load the engine in the background and serve until interrupted."""
    import uvicorn

    if bool(server_cfg.certfile) != bool(server_cfg.keyfile):
        raise ConfigError("HTTPS needs both a certificate file and a key file", param="certfile")

    def load() -> Any:
        from conversation.session import Sessions  # heavy imports happen in the loading thread
        from models.engine import Engine

        return Sessions(Engine.load(model_cfg))

    app = create_app(load, server_cfg)
    scheme = "https" if server_cfg.certfile else "http"
    log.info("seetalk on %s://%s:%s", scheme, server_cfg.host, server_cfg.port)
    uvicorn.run(
        app,
        host=server_cfg.host,
        port=server_cfg.port,
        ws="websockets-sansio",
        ws_max_size=server_cfg.max_ws_message_bytes,
        ssl_certfile=server_cfg.certfile,
        ssl_keyfile=server_cfg.keyfile,
        log_level=log_level,
    )


__all__ = ["HttpError", "SeetalkError", "check_offer_sdp", "create_app", "serve"]
