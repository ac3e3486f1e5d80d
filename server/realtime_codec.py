"""Audio formats of the Realtime protocol: pcm16 24 kHz, G.711 mu-law and A-law (8 kHz).

Pure and synchronous. Decoding turns a client's bytes into ``int16`` samples and their rate
(the session resamples them); :class:`AudioEncoder` turns the session's ``int16`` output
(at 24 kHz) into the bytes of the client's output format. G.711 uses 256/65 536-entry lookup
tables built once with numpy (the same values as the standard library's ``audioop``, which
Python 3.13 removed).
"""

from __future__ import annotations

import numpy as np

from conversation.protocol import FORMATS, G711_RATE, PCM16, PCM_RATE, PCMA, PCMU, AudioFormat
from seetalk.errors import BadAudio
from voice.audio import StreamResampler, float_to_s16

# --- G.711 tables ----------------------------------------------------------------------


def _ulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exp = (u >> 4) & 0x07
    mant = u & 0x0F
    t = ((mant << 3) + 0x84) << exp
    t -= 0x84
    return np.where(u & 0x80, -t, t).astype(np.int16)


def _alaw_decode_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exp = (a & 0x70) >> 4
    mant = a & 0x0F
    t = np.where(exp == 0, (mant << 4) + 8, ((mant << 4) + 0x108) << np.maximum(exp - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _segment(x: np.ndarray, ends: tuple[int, ...]) -> np.ndarray:
    return np.searchsorted(np.asarray(ends), x, side="left").astype(np.int32)


def _ulaw_encode_table() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2  # 14-bit, as audioop
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.where(pcm < 0, -pcm, pcm), 8159) + (0x84 >> 2)
    seg = _segment(mag, (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF))
    val = (seg << 4) | ((mag >> (seg + 1)) & 0x0F)
    return np.where(seg >= 8, 0x7F ^ mask, val ^ mask).astype(np.uint8)


def _alaw_encode_table() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3  # 13-bit, as audioop
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = _segment(mag, (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF))
    shift = np.where(seg < 2, 1, seg)
    val = (seg << 4) | ((mag >> shift) & 0x0F)
    return np.where(seg >= 8, 0x7F ^ mask, val ^ mask).astype(np.uint8)


ULAW_DECODE = _ulaw_decode_table()
ALAW_DECODE = _alaw_decode_table()
ULAW_ENCODE = _ulaw_encode_table()
ALAW_ENCODE = _alaw_encode_table()


# --- decode / encode ---------------------------------------------------------------------


def decode_audio(data: bytes, fmt: AudioFormat) -> np.ndarray:
    """The client's bytes in ``fmt`` as mono ``int16`` samples at ``fmt.rate``.

    Raises :class:`BadAudio` for a WAV/RIFF container (send raw samples) and for pcm16 of an
    odd byte count.
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        raise BadAudio(f"audio is a WAV file; send raw {fmt.type} samples without a header")
    if fmt.type == "audio/pcm":
        if len(data) % 2:
            raise BadAudio(
                f"pcm16 audio must be a whole number of 2-byte samples, got {len(data)} bytes"
            )
        return np.frombuffer(data, dtype="<i2").astype(np.int16)
    codes = np.frombuffer(data, dtype=np.uint8)
    table = ULAW_DECODE if fmt.type == "audio/pcmu" else ALAW_DECODE
    return table[codes]


def encode_samples(samples: np.ndarray, fmt: AudioFormat) -> bytes:
    """Mono ``int16`` samples already at ``fmt.rate`` as bytes of ``fmt``."""
    s = np.asarray(samples, dtype=np.int16).reshape(-1)
    if fmt.type == "audio/pcm":
        return s.astype("<i2").tobytes()
    table = ULAW_ENCODE if fmt.type == "audio/pcmu" else ALAW_ENCODE
    return table[s.astype(np.int32) + 32768].tobytes()


class AudioEncoder:
    """Streams the session's ``int16`` output at ``in_rate`` into ``fmt`` bytes.

    G.711 output is resampled to 8 kHz with a streaming resampler; :meth:`reset` starts a new
    signal (a new assistant item) and drops what the filter held of the old one.
    """

    def __init__(self, fmt: AudioFormat, in_rate: int = PCM_RATE) -> None:
        self.fmt = fmt
        self.in_rate = in_rate
        self._resampler = None if fmt.rate == in_rate else StreamResampler(in_rate, fmt.rate)

    def encode(self, samples: np.ndarray) -> bytes:
        s = np.asarray(samples).reshape(-1)
        if self._resampler is not None:
            x = self._resampler.process(s.astype(np.float32) / 32768.0)
            s = float_to_s16(x)
        return encode_samples(s, self.fmt)

    def flush(self) -> bytes:
        """The end of the signal the filter held back; then ready for a new one."""
        if self._resampler is None:
            return b""
        return encode_samples(float_to_s16(self._resampler.flush()), self.fmt)

    def reset(self) -> None:
        """Drop what the filter holds (the signal was cut) and start a new one."""
        self.flush()


def duration_ms(n_bytes: int, fmt: AudioFormat) -> float:
    """Milliseconds of audio in ``n_bytes`` of ``fmt``."""
    return 1000.0 * n_bytes / (fmt.bytes_per_sample * fmt.rate)


__all__ = [
    "ALAW_DECODE",
    "ALAW_ENCODE",
    "FORMATS",
    "G711_RATE",
    "PCM16",
    "PCMA",
    "PCMU",
    "PCM_RATE",
    "ULAW_DECODE",
    "ULAW_ENCODE",
    "AudioEncoder",
    "AudioFormat",
    "decode_audio",
    "duration_ms",
    "encode_samples",
]
