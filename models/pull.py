"""``seetalk models pull [NAME]``: download a listed vision-language model (needs internet).

Each model is two GGUF files, the language model and its vision projector (``--mmproj``),
from the ggml-org repositories on Hugging Face that llama.cpp's own server uses. Files go
into ``models/user/`` (or ``$SEETALK_MODEL_DIR``): each is downloaded to a ``.part`` file
beside it and renamed into place when complete, so an interrupted download never leaves a
file that looks whole. Nothing in seetalk downloads anything except this command.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

HF = "https://huggingface.co"
CHUNK = 1 << 20


@dataclass(frozen=True)
class VisionModel:
    name: str
    repo: str
    model_file: str
    mmproj_file: str
    size_mb: int
    licence: str
    note: str

    def url(self, filename: str) -> str:
        return f"{HF}/{self.repo}/resolve/main/{filename}"


VISION_MODELS: dict[str, VisionModel] = {
    m.name: m
    for m in (
        VisionModel(
            "smolvlm-256m",
            "ggml-org/SmolVLM-256M-Instruct-GGUF",
            "SmolVLM-256M-Instruct-Q8_0.gguf",
            "mmproj-SmolVLM-256M-Instruct-Q8_0.gguf",
            280,
            "Apache-2.0",
            "smallest; fast on CPU, simple answers",
        ),
        VisionModel(
            "smolvlm-500m",
            "ggml-org/SmolVLM-500M-Instruct-GGUF",
            "SmolVLM-500M-Instruct-Q8_0.gguf",
            "mmproj-SmolVLM-500M-Instruct-Q8_0.gguf",
            540,
            "Apache-2.0",
            "small; a good CPU default",
        ),
        VisionModel(
            "smolvlm2-2.2b",
            "ggml-org/SmolVLM2-2.2B-Instruct-GGUF",
            "SmolVLM2-2.2B-Instruct-Q4_K_M.gguf",
            "mmproj-SmolVLM2-2.2B-Instruct-Q8_0.gguf",
            1600,
            "Apache-2.0",
            "better answers; wants a fast CPU or a GPU",
        ),
        VisionModel(
            "qwen2.5-vl-3b",
            "ggml-org/Qwen2.5-VL-3B-Instruct-GGUF",
            "Qwen2.5-VL-3B-Instruct-Q4_K_M.gguf",
            "mmproj-Qwen2.5-VL-3B-Instruct-Q8_0.gguf",
            2700,
            "Qwen research licence (non-commercial)",
            "strong at reading text; GPU recommended",
        ),
        VisionModel(
            "gemma-3-4b",
            "ggml-org/gemma-3-4b-it-GGUF",
            "gemma-3-4b-it-Q4_K_M.gguf",
            "mmproj-model-f16.gguf",
            3300,
            "Gemma terms of use",
            "strong general answers; GPU recommended",
        ),
    )
}


def model_dir() -> Path:
    env = os.environ.get("SEETALK_MODEL_DIR")
    return Path(env).expanduser() if env else Path(__file__).parent / "user"


def _size(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def download(
    url: str, dest: str | Path, *, out: TextIO | None = None, timeout_s: float = 30.0
) -> Path:
    """Download ``url`` to ``dest`` with a progress bar on ``out`` (stderr): into
    ``dest.part`` first, renamed into place when complete. Raises ``OSError`` (including
    ``urllib.error.URLError``) on failure, leaving no ``.part`` file behind."""
    out = out if out is not None else sys.stderr
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    request = urllib.request.Request(url, headers={"User-Agent": "seetalk-models-pull"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response, open(part, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            last = 0.0
            while chunk := response.read(CHUNK):
                f.write(chunk)
                done += len(chunk)
                now = time.monotonic()
                if now - last >= 0.2:
                    last = now
                    _bar(out, dest.name, done, total)
            if total and done != total:
                raise OSError(f"{url}: got {done} of {total} bytes")
        _bar(out, dest.name, done, total or done)
        out.write("\n")
        os.replace(part, dest)
    finally:
        if part.exists():
            part.unlink()
    return dest


def _bar(out: TextIO, name: str, done: int, total: int, width: int = 30) -> None:
    if total:
        filled = int(width * done / total)
        out.write(
            f"\r{name} [{'#' * filled}{'.' * (width - filled)}] "
            f"{100 * done / total:5.1f}% {_size(done)} of {_size(total)}"
        )
    else:
        out.write(f"\r{name} {_size(done)}")
    out.flush()


def list_models(out: TextIO) -> None:
    out.write("Vision-language models (seetalk models pull NAME):\n")
    for m in VISION_MODELS.values():
        out.write(f"  {m.name:<15} ~{m.size_mb:>5} MB  {m.licence:<38} {m.note}\n")
        out.write(f"  {'':<15} {m.url(m.model_file)}\n")
        out.write(f"  {'':<15} {m.url(m.mmproj_file)}\n")


def pull(
    name: str | None,
    *,
    dest_dir: str | Path | None = None,
    out: TextIO | None = None,
    base_url: str | None = None,
) -> int:
    """List the models (``name`` None, exit 0), or download ``name`` into ``models/user/``
    and say how to run it (exit 0); unknown name: 2; download failed: 1. ``base_url``
    replaces ``https://huggingface.co`` (a mirror)."""
    out = out if out is not None else sys.stdout
    if name is None:
        list_models(out)
        return 0
    model = VISION_MODELS.get(name.lower())
    if model is None:
        out.write(f"unknown vision model {name!r}; known: {', '.join(VISION_MODELS)}\n")
        return 2
    target = Path(dest_dir) if dest_dir is not None else model_dir()
    paths = []
    for filename in (model.model_file, model.mmproj_file):
        dest = target / filename
        paths.append(dest)
        if dest.is_file() and dest.stat().st_size > 0:
            out.write(f"{dest} is already there\n")
            continue
        url = model.url(filename)
        if base_url:
            url = url.replace(HF, base_url.rstrip("/"), 1)
        try:
            download(url, dest)
        except (OSError, ValueError) as exc:
            out.write(f"\ndownload of {url} failed: {exc}\n")
            return 1
    out.write(
        f"{model.name} is ready. Run seetalk with it:\n"
        f"  seetalk serve --llm {paths[0]} --mmproj {paths[1]}\n"
        f"  (or SEETALK_LLM={paths[0]} SEETALK_MMPROJ={paths[1]})\n"
    )
    return 0
