"""The command line as a user meets it: clear lines and exit codes, no tracebacks."""

from __future__ import annotations

import subprocess
import sys


def seetalk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seetalk.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_models_lists_every_role() -> None:
    proc = seetalk("models")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for role in ("vad", "asr", "voice", "llm"):
        assert role in proc.stdout
    assert "GPL-3.0" in proc.stdout  # piper's licence is said where the voice is listed


def test_a_missing_model_is_one_clear_line() -> None:
    proc = seetalk("models", "--llm", "/nowhere/model.gguf")
    assert proc.returncode == 1
    assert "/nowhere/model.gguf does not exist" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    run = seetalk("run-file", "/nowhere/in.wav")
    assert (
        run.returncode == 2
        and run.stderr.strip() == "seetalk: audio file not found: /nowhere/in.wav"
    )


def test_serve_refuses_half_a_tls_setup(tmp_path) -> None:
    proc = seetalk("serve", "--certfile", str(tmp_path / "cert.pem"))
    assert proc.returncode == 2 and "--keyfile" in proc.stderr


def test_serve_takes_the_resume_window(monkeypatch) -> None:
    import server.app
    from seetalk.cli import main

    started: list = []
    monkeypatch.setattr(server.app, "serve", lambda models, cfg: started.append(cfg))
    assert main(["serve"]) == 0 and started[-1].resume_window_s == 60.0
    assert main(["serve", "--resume-window", "5"]) == 0 and started[-1].resume_window_s == 5.0
    assert main(["serve", "--resume-window", "-1"]) == 2 and len(started) == 2
