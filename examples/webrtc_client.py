"""A seetalk WebRTC client on aiortc: a WAV as its microphone, a video file as its camera.

    python examples/webrtc_client.py --url http://127.0.0.1:8080 --wav question.wav \\
        [--video camera.y4m] [--out reply.wav] [--seconds 20] [--text "hello"] [--key KEY]

It prints every event from the data channel and records the reply audio. It is also a
library: tests and ``bench/webrtc.py`` use :class:`Client`, :class:`SpeechSource` (speech
queued at any time, paced by asyncio, silence in between) and :class:`ReplyRecorder`
(arrival-time levels of the reply audio).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import sys
import time
import wave
from collections import deque
from collections.abc import Callable
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

RATE = 48_000
FRAME = 960  # 20 ms


def load_audio(path: str, rate: int = RATE) -> np.ndarray:
    """Any audio file -> int16 mono at ``rate``."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    chunks = []
    with av.open(path) as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float32) ** 2))) if len(samples) else 0.0


class SpeechSource(MediaStreamTrack):
    """A microphone made of queued speech: silence until :meth:`say`, paced in 20 ms frames.

    ``speech_started_at`` / ``speech_ended_at``: monotonic times at which the last utterance's
    first and last loud frame left (what the server hears, minus the network).
    """

    kind = "audio"

    def __init__(self, threshold: float = 300.0) -> None:
        super().__init__()
        self._queue: deque[np.ndarray] = deque()
        self._start: float | None = None
        self._sent = 0
        self._threshold = threshold
        self._in_speech = False
        self.speech_started_at: float | None = None
        self.speech_ended_at: float | None = None

    def say(self, samples: np.ndarray) -> None:
        """Queue ``samples`` (int16 mono at 48 kHz) after whatever is still queued."""
        for i in range(0, len(samples), FRAME):
            chunk = np.zeros(FRAME, np.int16)
            part = samples[i : i + FRAME]
            chunk[: len(part)] = part
            self._queue.append(chunk)

    @property
    def queued_s(self) -> float:
        return len(self._queue) * FRAME / RATE

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self._sent / RATE
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > 0.2:
            self._start, self._sent = now, 0
        pcm = self._queue.popleft() if self._queue else np.zeros(FRAME, np.int16)
        loud = rms(pcm) > self._threshold
        if loud and not self._in_speech:
            self.speech_started_at, self.speech_ended_at = time.monotonic(), None
        if loud:
            self._in_speech = True
        elif self._in_speech and not self._queue:
            self._in_speech = False
            self.speech_ended_at = time.monotonic()
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = RATE, self._sent
        frame.time_base = fractions.Fraction(1, RATE)
        self._sent += FRAME
        return frame


class CameraSource(MediaStreamTrack):
    """A camera: frames of a video file (looped) or a moving test pattern, paced at ``fps``."""

    kind = "video"

    def __init__(
        self, path: str | None = None, width: int = 640, height: int = 480, fps: float = 15.0
    ) -> None:
        super().__init__()
        self.fps = fps
        self._frames: list[av.VideoFrame] = []
        if path:
            with av.open(path) as container:
                for i, f in enumerate(container.decode(video=0)):
                    self._frames.append(f.reformat(format="yuv420p"))
                    if i >= 300:
                        break
        if not self._frames:
            base = np.zeros((height, width, 3), np.uint8)
            base[:, :, 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
            self._pattern = base
        self._start: float | None = None
        self._n = 0

    async def pace(self) -> None:
        """Wait until the next frame is due (frame ``n`` at ``start + n / fps``)."""
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self._n / self.fps
        if due > now:
            await asyncio.sleep(due - now)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self.pace()
        if self._frames:
            frame = self._frames[self._n % len(self._frames)]
            frame = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
        else:
            img = self._pattern.copy()
            x = (self._n * 8) % img.shape[1]
            img[:, x : x + 16, 2] = 255
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = int(self._n * 90_000 / self.fps), fractions.Fraction(1, 90_000)
        self._n += 1
        return frame


def encode_camera(
    seconds: float = 4.0, fps: int = 15, width: int = 640, height: int = 480
) -> list[av.Packet]:
    """A moving pattern encoded once as VP8 (keyframe at the loop start), so a
    :class:`PacketCamera` can send video without encoding on the client's loop."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.bit_rate = 600_000
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "g": str(int(seconds * fps)),
        "lag-in-frames": "0",
    }
    packets: list[av.Packet] = []
    base = np.zeros((height, width, 3), np.uint8)
    base[:, :, 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    for n in range(int(seconds * fps)):
        img = base.copy()
        img[:, (n * 8) % width : (n * 8) % width + 24, 2] = 255
        frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
        frame.pts = n
        packets.extend(codec.encode(frame))
    packets.extend(codec.encode(None))
    return packets


class PacketCamera(CameraSource):
    """Sends pre-encoded VP8 packets (aiortc packetizes them without encoding)."""

    def __init__(self, packets: list[av.Packet], fps: float = 15.0) -> None:
        super().__init__(None, 16, 16, fps)
        self._packets = packets

    async def recv(self) -> Any:  # type: ignore[override]
        await self.pace()
        src = self._packets[self._n % len(self._packets)]
        packet = av.Packet(bytes(src))
        packet.pts = int(self._n * 90_000 / self.fps)
        packet.time_base = fractions.Fraction(1, 90_000)
        self._n += 1
        return packet


class ReplyRecorder:
    """Reads the reply track: keeps the samples and (arrival time, level) of every frame."""

    def __init__(self, threshold: float = 300.0, keep_s: float = 600.0) -> None:
        self.threshold = threshold
        self.chunks: deque[np.ndarray] = deque(maxlen=int(keep_s * 50))
        self.levels: deque[tuple[float, float]] = deque(maxlen=int(keep_s * 50))

    async def run(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            data = frame.to_ndarray().reshape(-1)
            channels = len(frame.layout.channels)
            mono = data[::channels] if channels > 1 else data
            self.chunks.append(mono.astype(np.int16))
            self.levels.append((time.monotonic(), rms(mono)))

    def first_loud_after(self, t: float) -> float | None:
        return next((at for at, lv in self.levels if at >= t and lv > self.threshold), None)

    def silent_from(self, t: float, frames: int = 5) -> float | None:
        """Start of the first run of ``frames`` quiet frames after ``t``."""
        run_start, run = None, 0
        for at, lv in self.levels:
            if at < t:
                continue
            if lv <= self.threshold:
                run_start = at if run == 0 else run_start
                run += 1
                if run >= frames:
                    return run_start
            else:
                run = 0
        return None

    def level_now(self, window: int = 5) -> float:
        recent = list(self.levels)[-window:]
        return max((lv for _, lv in recent), default=0.0)

    def save(self, path: str) -> None:
        with wave.open(path, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            for chunk in self.chunks:
                w.writeframes(chunk.tobytes())


class Client:
    """One WebRTC session with a seetalk server. ``async with Client(url) as c: ...``"""

    def __init__(
        self,
        url: str,
        *,
        key: str | None = None,
        video: str | bool | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        max_events: int = 10_000,
        resume: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.resume = resume  # a resume token: offer for that dropped session (docs/webrtc.md)
        self.mic = SpeechSource()
        self.camera = CameraSource(video if isinstance(video, str) else None) if video else None
        self.recorder = ReplyRecorder()
        self.pc = RTCPeerConnection()
        self.channel: Any = None
        self.session_id: str | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._on_event = on_event
        self._waiters: list[tuple[Callable[[dict[str, Any]], bool], asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, limit_s: float = 15.0) -> None:
        pc = self.pc
        pc.addTrack(self.mic)
        if self.camera is not None:
            pc.addTrack(self.camera)
        self.channel = pc.createDataChannel("oai-events")
        opened = asyncio.get_running_loop().create_future()

        @self.channel.on("open")
        def _opened() -> None:
            if not opened.done():
                opened.set_result(None)

        self.channel.on("message", self._on_message)

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                task = asyncio.ensure_future(self.recorder.run(track))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        async with httpx.AsyncClient(timeout=limit_s) as http:
            r = await http.post(
                f"{self.url}/offer",
                params={"resume": self.resume} if self.resume else None,
                headers=headers,
                json={"sdp": pc.localDescription.sdp, "type": "offer"},
            )
        if r.status_code != 200:
            raise ConnectionError(f"offer refused: {r.status_code} {r.text}")
        answer = r.json()
        self.session_id = answer["session_id"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await asyncio.wait_for(opened, limit_s)

    def _on_message(self, message: str | bytes) -> None:
        event = json.loads(message)
        event["_t"] = time.monotonic()
        self.events.append(event)
        if self._on_event is not None:
            self._on_event(event)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(event):
                fut.set_result(event)

    def send(self, event: dict[str, Any] | str) -> None:
        self.channel.send(event if isinstance(event, str) else json.dumps(event))

    def say_text(self, text: str) -> None:
        """A typed message and a request for a reply."""
        self.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                },
            }
        )
        self.send({"type": "response.create"})

    async def wait_for(
        self,
        type_: str,
        limit_s: float = 30.0,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
        since: float = 0.0,
    ) -> dict[str, Any]:
        """The first event of ``type_`` (received at or after ``since``) matching ``where``."""

        def pred(e: dict[str, Any]) -> bool:
            return e.get("type") == type_ and e["_t"] >= since and where(e)

        for event in self.events:
            if pred(event):
                return event
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            return await asyncio.wait_for(fut, limit_s)
        finally:
            self._waiters.remove((pred, fut))

    @property
    def resume_token(self) -> str | None:
        """The token of the last ``session.created``: pass it as ``resume`` to a new
        :class:`Client` to come back to this session after a drop."""
        created = self.of_type("session.created")
        return created[-1]["session"].get("seetalk", {}).get("resume_token") if created else None

    def vanish(self) -> None:
        """Stop sending any media without closing the connection: to the server, the
        network went away (it notices by its media timeout)."""
        self.mic.stop()
        if self.camera is not None:
            self.camera.stop()

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == type_]

    async def close(self) -> None:
        await self.pc.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--wav", help="audio file sent as the microphone (after 1 s of silence)")
    p.add_argument("--video", help="video file sent as the camera (looped)")
    p.add_argument("--text", help="a typed message sent once connected")
    p.add_argument("--out", default="reply.wav", help="where to write the received audio")
    p.add_argument("--seconds", type=float, default=20.0, help="how long to stay connected")
    p.add_argument("--key", help="API key or session token")
    args = p.parse_args(argv)

    def show(event: dict[str, Any]) -> None:
        shown = {k: v for k, v in event.items() if k not in ("_t", "event_id")}
        print(json.dumps(shown)[:300], flush=True)

    client = Client(args.url, key=args.key, video=args.video, on_event=show)
    try:
        await client.connect()
    except (ConnectionError, httpx.HTTPError, TimeoutError) as exc:
        print(f"could not connect: {exc}", file=sys.stderr)
        await client.close()
        return 1
    print(f"connected: session {client.session_id}", file=sys.stderr)
    try:
        if args.wav:
            client.mic.say(np.zeros(RATE, np.int16))
            client.mic.say(load_audio(args.wav))
        if args.text:
            client.say_text(args.text)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), args.seconds)
    finally:
        client.recorder.save(args.out)
        await client.close()
    print(f"reply audio written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
