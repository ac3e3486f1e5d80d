"""Resolution of the model files that serve each role (VAD, ASR, voice, LLM).

The embedded defaults ship inside PyPI packages (see ``models/README.md``); any role can be
pointed at a file or directory of one's own through :class:`seetalk.config.ModelConfig`.
"""

from models.registry import (
    RoleInfo,
    describe,
    format_table,
    prepare,
    resolve_asr,
    resolve_llm,
    resolve_vad,
    resolve_voice,
)

__all__ = [
    "RoleInfo",
    "describe",
    "format_table",
    "prepare",
    "resolve_asr",
    "resolve_llm",
    "resolve_vad",
    "resolve_voice",
]
