"""Vision and the model: camera frames and chat messages in, reply text out.

The model backends (:mod:`vision.backends`) live here because the same model that answers
also receives the camera frames.
"""

from vision.backend_local import LlamaCppBackend
from vision.backend_openai import OpenAIChatBackend
from vision.backends import ChatBackend, ChatMessage, GenerationSettings, make_backend

__all__ = [
    "ChatBackend",
    "ChatMessage",
    "GenerationSettings",
    "LlamaCppBackend",
    "OpenAIChatBackend",
    "make_backend",
]
