"""``seetalk``: serve, run a recording through a session, list and prepare models."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from seetalk.config import (
    McpConfig,
    ModelConfig,
    ServerConfig,
    SessionSettings,
    builtin_tools_from_env,
    model_config_from_env,
)
from seetalk.errors import SeetalkError


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (default: the embedded models; env SEETALK_* too)")
    g.add_argument("--vad", help="Silero VAD .onnx file")
    g.add_argument("--asr", help="whisper: 'base', 'tiny.en' or a CTranslate2 directory")
    g.add_argument("--asr-partial", help="whisper for partial transcripts ('tiny.en'; '' = --asr)")
    g.add_argument("--voice", help="piper voice .onnx (its .onnx.json beside it)")
    g.add_argument("--llm", help="GGUF model file for llama.cpp in-process")
    g.add_argument("--mmproj", help="projector GGUF of a local vision-language model")
    g.add_argument("--llm-base-url", help="OpenAI-compatible server, e.g. http://host:8000/v1")
    g.add_argument("--llm-model", help="model name on that server")
    g.add_argument("--llm-api-key", help="API key for that server")
    g.add_argument("--asr-base-url", help="OpenAI-compatible transcription server for finals")
    g.add_argument("--asr-model", help="model name on that server")
    g.add_argument("--asr-api-key", help="API key for that server")
    g.add_argument("--tts-base-url", help="OpenAI-compatible speech server (/audio/speech)")
    g.add_argument("--tts-model", help="model name on that server")
    g.add_argument("--tts-voice", help="voice name on that server")
    g.add_argument("--tts-api-key", help="API key for that server")


def _model_cfg(a: argparse.Namespace) -> ModelConfig:
    return model_config_from_env(
        vad=a.vad,
        asr=a.asr,
        asr_partial=a.asr_partial,
        voice=a.voice,
        llm=a.llm,
        mmproj=a.mmproj,
        llm_base_url=a.llm_base_url,
        llm_model=a.llm_model,
        llm_api_key=a.llm_api_key,
        asr_base_url=a.asr_base_url,
        asr_model=a.asr_model,
        asr_api_key=a.asr_api_key,
        tts_base_url=a.tts_base_url,
        tts_model=a.tts_model,
        tts_voice=a.tts_voice,
        tts_api_key=a.tts_api_key,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seetalk", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve the web client, WebRTC and the WebSocket API")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--api-key", help="require this key as a Bearer token (env SEETALK_API_KEY)")
    s.add_argument("--max-sessions", type=int, default=8)
    s.add_argument("--idle-timeout", type=float, default=300.0, help="seconds")
    s.add_argument(
        "--ice-server",
        action="append",
        default=[],
        help="STUN/TURN URL, optionally 'turn:host:3478|user|credential' (repeatable)",
    )
    s.add_argument("--certfile", help="TLS certificate (browsers need HTTPS off localhost)")
    s.add_argument("--keyfile", help="TLS private key")
    s.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="URL",
        help="a web page origin (https://app.example.org) that may open sessions besides the "
        "server's own page; '*' for any (repeatable; env SEETALK_ALLOW_ORIGINS, comma-separated)",
    )
    s.add_argument(
        "--turn-url",
        action="append",
        default=[],
        help="TURN server (turn:host:3478) that gets per-session credentials from "
        "--turn-secret (repeatable; env SEETALK_TURN_URLS, comma-separated)",
    )
    s.add_argument(
        "--turn-secret", help="coturn static-auth-secret (env SEETALK_TURN_SECRET; prefer the env)"
    )
    s.add_argument("--turn-ttl", type=float, default=3600.0, help="TURN credential lifetime, s")
    s.add_argument("--docs", action="store_true", help="serve /docs, /redoc and /openapi.json")
    s.add_argument(
        "--token-secret",
        help="sign session tokens with this secret, shared by every instance behind the "
        "balancer so any of them accepts them (env SEETALK_TOKEN_SECRET; prefer the env)",
    )
    s.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM: stop admitting, let open sessions run up to this many seconds",
    )
    s.add_argument(
        "--resume-window",
        type=float,
        default=60.0,
        help="seconds a dropped session waits for its client to resume it (0: never)",
    )
    s.add_argument(
        "--tools",
        help="built-in tools every session's model may call: time,look (default none; "
        "env SEETALK_TOOLS)",
    )
    s.add_argument(
        "--mcp",
        action="append",
        default=[],
        metavar="NAME=COMMAND|URL",
        help="an MCP server whose tools every session may use: NAME=COMMAND ARGS (stdio) or "
        "NAME=https://... (streamable HTTP); repeatable (docs/tools.md)",
    )
    s.add_argument(
        "--mcp-allow-url",
        action="append",
        default=[],
        metavar="PREFIX",
        help="a URL prefix that a session's mcp tool may name in server_url (default none; "
        "repeatable)",
    )
    s.add_argument(
        "--timezone",
        help="IANA time zone of the time tool, e.g. Europe/Paris (default UTC; a session "
        "sets its own with seetalk.timezone; env SEETALK_TIMEZONE)",
    )
    _model_args(s)

    r = sub.add_parser("run-file", help="play a recording into a session as a live microphone")
    r.add_argument("input", help="any audio file")
    r.add_argument("--out", help="write the assistant's audio here (WAV, same timeline)")
    r.add_argument("--events", help="write the events here, one JSON object per line")
    r.add_argument(
        "--fast",
        action="store_true",
        help="virtual clock: faster than real time; model compute takes no time",
    )
    r.add_argument("--camera", help="an image (a still camera) or a video file as the camera")
    r.add_argument("--silence-ms", type=int, help="endpointing silence")
    r.add_argument(
        "--echo",
        metavar="DELAY_MS,GAIN",
        help="simulate a loudspeaker next to the microphone: the reply comes back into the "
        "input DELAY_MS later at GAIN, with a little reverberation (e.g. 150,0.5)",
    )
    _model_args(r)

    m = sub.add_parser("models", help="list each model role, what resolves, size and licence")
    m.add_argument("--prepare", action="store_true", help="also build derived files (whisper base)")
    m.add_argument("--json", action="store_true")
    msub = m.add_subparsers(dest="models_command")
    pull = msub.add_parser("pull", help="download a listed vision-language model (needs internet)")
    pull.add_argument("name", nargs="?")
    ms = msub.add_parser(
        "serve", help="serve this machine's models over the OpenAI APIs (/v1/audio/*, /v1/chat)"
    )
    ms.add_argument("--host", default="127.0.0.1")
    ms.add_argument("--port", type=int, default=9000)
    ms.add_argument("--api-key", help="require this bearer key (env SEETALK_MODELS_API_KEY)")
    ms.add_argument("--roles", default="asr,tts,llm", help="which of asr,tts,llm to serve")
    _model_args(ms)
    _model_args(m)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return _dispatch(args)
    except SeetalkError as exc:
        print(f"seetalk: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    cfg = _model_cfg(args)
    if args.command == "models":
        return _models(args, cfg)
    if args.command == "run-file":
        return _run_file(args, cfg)
    return _serve(args, cfg)


def _models(args: argparse.Namespace, cfg: ModelConfig) -> int:
    if args.models_command == "serve":
        import os

        from models.serve import serve_models

        serve_models(
            cfg,
            roles=[r.strip() for r in args.roles.split(",") if r.strip()],
            host=args.host,
            port=args.port,
            api_key=args.api_key or os.environ.get("SEETALK_MODELS_API_KEY") or None,
            log_level="info" if args.verbose else "warning",
        )
        return 0
    if args.models_command == "pull":
        from models.pull import pull  # type: ignore[import-not-found]

        return pull(args.name)
    from models.registry import describe, format_table, prepare

    rows = prepare(cfg) if args.prepare else describe(cfg)
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], default=str, indent=2))
    else:
        print(format_table(rows))
    return 0 if all(r.ok for r in rows) else 1


def _run_file(args: argparse.Namespace, cfg: ModelConfig) -> int:
    from conversation.filesession import run_file
    from models.engine import Engine

    settings = SessionSettings()
    if args.silence_ms is not None:
        from seetalk.config import updated

        settings = updated(settings, {"turn": {"silence_ms": args.silence_ms}})
    from voice.audio import load_audio_file

    load_audio_file(args.input)  # a bad file fails before the models load
    camera: Any = None
    if args.camera:
        from vision.camera import FileCamera  # type: ignore[import-not-found]

        camera = FileCamera.open(args.camera)
    echo = None
    if args.echo:
        from voice.loudspeaker import EchoSpec

        try:
            echo = EchoSpec.parse(args.echo)
        except ValueError as exc:
            print(f"seetalk: {exc}", file=sys.stderr)
            return 2
    engine = Engine.load(cfg)

    async def go() -> None:
        try:
            run = await run_file(
                engine,
                args.input,
                args.out,
                args.events,
                fast=args.fast,
                settings=settings,
                camera=camera,
                echo=echo,
            )
        finally:
            await engine.aclose()
        for item in run.history:
            mark = " (interrupted)" if item["interrupted"] else ""
            print(f"{item['role']}: {item['text']}{mark}")

    asyncio.run(go())
    return 0


def _serve(args: argparse.Namespace, cfg: ModelConfig) -> int:
    import os

    from server.app import serve

    ice: list[dict[str, Any]] = []
    for spec in args.ice_server:
        url, *cred = spec.split("|")
        entry: dict[str, Any] = {"urls": [url]}
        if len(cred) == 2:
            entry["username"], entry["credential"] = cred
        ice.append(entry)
    server_cfg = ServerConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get("SEETALK_API_KEY") or None,
        max_sessions=args.max_sessions,
        idle_timeout_s=args.idle_timeout,
        ice_servers=tuple(ice),
        certfile=args.certfile,
        keyfile=args.keyfile,
        allow_origins=tuple(args.allow_origin or _env_list("SEETALK_ALLOW_ORIGINS")),
        turn_urls=tuple(args.turn_url or _env_list("SEETALK_TURN_URLS")),
        turn_secret=args.turn_secret or os.environ.get("SEETALK_TURN_SECRET") or None,
        turn_ttl_s=args.turn_ttl,
        docs=args.docs,
        token_secret=args.token_secret or os.environ.get("SEETALK_TOKEN_SECRET") or None,
        drain_timeout_s=args.drain_timeout,
        resume_window_s=args.resume_window,
        tools=builtin_tools_from_env(args.tools, args.timezone),
        mcp=McpConfig(tuple(args.mcp), tuple(args.mcp_allow_url)),
    )
    if server_cfg.resume_window_s < 0:
        print("seetalk: --resume-window is seconds, 0 or more", file=sys.stderr)
        return 2
    if server_cfg.turn_urls and not server_cfg.turn_secret:
        print("seetalk: --turn-url needs --turn-secret (or SEETALK_TURN_SECRET)", file=sys.stderr)
        return 2
    if bool(server_cfg.certfile) != bool(server_cfg.keyfile):
        print("seetalk: --certfile and --keyfile go together", file=sys.stderr)
        return 2
    for path in (server_cfg.certfile, server_cfg.keyfile):
        if path and not Path(path).is_file():
            print(f"seetalk: {path} does not exist", file=sys.stderr)
            return 2
    serve(cfg, server_cfg)
    return 0


def _env_list(name: str) -> list[str]:
    """A comma-separated ``SEETALK_*`` variable as a list (empty when unset)."""
    import os

    return [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()]


if __name__ == "__main__":
    sys.exit(main())
