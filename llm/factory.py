"""Which backend serves the language model: picked once from the settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llm.backend import ChatBackend
from seetalk.config import ModelConfig


def make_backend(cfg: ModelConfig, resolve_llm: Callable[[ModelConfig], Path]) -> ChatBackend:
    """The backend ``cfg`` asks for: an OpenAI-compatible server when ``cfg.llm_base_url`` is
    set, else llama.cpp in-process on the GGUF file ``resolve_llm(cfg)`` returns (with
    ``cfg.mmproj`` as the vision projector when set). Nothing is loaded or connected yet;
    ``resolve_llm`` may raise :class:`~seetalk.errors.ModelNotFound`."""
    if cfg.llm_base_url:
        from llm.openai_compat import OpenAIChatBackend

        return OpenAIChatBackend(
            cfg.llm_base_url,
            api_key=cfg.llm_api_key,
            model=cfg.llm_model,
            timeout_s=cfg.llm_timeout_s,
        )
    from llm.local import LlamaCppBackend

    mmproj = Path(cfg.mmproj) if cfg.mmproj else None
    return LlamaCppBackend(
        resolve_llm(cfg),
        # An image costs hundreds of tokens of context.
        n_ctx=4096 if mmproj else 2048,
        threads=cfg.llm_threads,
        mmproj_path=mmproj,
    )
