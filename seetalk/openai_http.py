"""What every client of an OpenAI-compatible server shares: the base URL and error bodies.

Used by the language model's client (:mod:`llm.openai_compat`) and the remote speech roles
(:mod:`voice.remote`).
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

MAX_ERROR_BODY = 64 * 1024


def normalize_base_url(base_url: str) -> str:
    """``http://host:8000`` -> ``http://host:8000/v1``; a URL with a path is kept as given."""
    base = base_url.rstrip("/")
    if urlsplit(base).path == "":
        base += "/v1"
    return base


def error_message(body: bytes) -> str:
    """The server's own words from an error body (OpenAI, FastAPI or plain text)."""
    text = body[:MAX_ERROR_BODY].decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    if isinstance(obj, dict):
        err = obj.get("error", obj.get("detail", obj.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return err if isinstance(err, str) else json.dumps(err)[:500]
    return text[:500]
