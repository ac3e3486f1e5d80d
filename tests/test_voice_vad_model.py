"""SharedSileroVad: one onnxruntime session per model file, state per stream."""

import numpy as np
import pytest

from seetalk.errors import ModelNotFound
from voice.vad import FRAME, SileroVad, VoiceActivity
from voice.vad_model import SharedSileroVad, shared_session


@pytest.mark.models
def test_streams_share_the_model_and_keep_their_own_state(silero_path, espeak):
    a, b = SharedSileroVad(silero_path), SharedSileroVad(silero_path)
    assert a._session is b._session is shared_session(silero_path)
    speech = espeak("testing one two three")
    frames = [speech[i : i + FRAME] for i in range(0, speech.size - FRAME, FRAME)]
    quiet = [np.zeros(FRAME, np.float32)] * len(frames)
    alone = SileroVad(silero_path)
    expected = [alone.prob(f) for f in frames]
    got_a, got_b = [], []
    for speech_frame, quiet_frame in zip(frames, quiet, strict=True):  # interleaved
        got_a.append(a.prob(speech_frame))
        got_b.append(b.prob(quiet_frame))
    np.testing.assert_allclose(got_a, expected, atol=1e-5)  # b's frames did not leak into a
    assert max(got_a) > 0.8 and max(got_b) < 0.2
    a.reset()
    np.testing.assert_allclose([a.prob(f) for f in frames], expected, atol=1e-5)


@pytest.mark.models
def test_voice_activity_takes_a_shared_stream(silero_path, espeak):
    activity = VoiceActivity(SharedSileroVad(silero_path))
    pad = np.zeros(16_000, np.float32)
    events = activity.feed(np.concatenate([pad, espeak("hello there, how are you"), pad]))
    kinds = [e.kind for e in events]
    assert kinds and kinds[::2] == ["speech_start"] * len(kinds[::2])  # start, end, start, ...
    assert kinds[-1] == "speech_end" and kinds[1::2] == ["speech_end"] * len(kinds[1::2])


def test_a_missing_model_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound, match="voice activity model"):
        SharedSileroVad(tmp_path / "missing.onnx")
