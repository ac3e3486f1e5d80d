"""The language (or vision-language) model: chat messages in, streamed text deltas out.

:mod:`llm.backend` is the interface every stage uses; :mod:`llm.local` runs a GGUF model
in-process with llama.cpp, :mod:`llm.openai_compat` any OpenAI-compatible server, and
:func:`llm.factory.make_backend` picks one from a :class:`~seetalk.config.ModelConfig`.
"""
