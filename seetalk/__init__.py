"""seetalk: a self-hosted realtime multimodal voice assistant.

The data path reads like the top-level packages: media in -> ``voice`` (VAD, ASR) ->
``conversation.turns`` (turn-taking) -> ``vision`` (frames + model) -> ``voice`` (TTS) -> media out.
This package holds what every stage shares: errors, the clock and the command line.
"""

__version__ = "0.1.0"
