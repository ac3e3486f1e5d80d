"""The voice stages of the data path: audio utilities, voice activity (Silero VAD),
speech recognition (faster-whisper) and speech synthesis (piper).

Models load lazily; inference is synchronous and meant to run in an executor, one per model.
"""
